"""Pre-activation ResNet-164 and ResNet-1001 on CIFAR-10 and CIFAR-100 (He et al. 2016, "Identity
Mappings in Deep Residual Networks").

    python train.py --config configs/cifar_preact.py:resnet164,cifar100 \
        --workdir runs/preact164_c100

Argument: {resnet164|resnet1001}[,{cifar10|cifar100}] (default dataset cifar10).
Recipe: the paper's CIFAR recipe (configs/cifar.py): batch 128, lr 0.1 with 0.01 for the first 400
iterations, /10 at 32k and 48k, 64k iterations, weight decay 1e-4, momentum 0.9, pad-4 crop and flip
with per-pixel mean subtraction; bottleneck blocks, projection shortcuts where the shape changes.

Expected test error (He et al. 2016, Table 4): CIFAR-10 ResNet-164 5.46 %, ResNet-1001 4.92 %;
CIFAR-100 ResNet-164 24.33 %, ResNet-1001 22.71 %.
Expected time: He et al. 2016 report about 27 hours for ResNet-1001 on 2 GPUs of 2016 (paper);
ResNet-164 costs about a sixth of that (estimate from depth).
"""

from configs import cifar
from resnet_jax.config import choose

MODELS = ("resnet164", "resnet1001")
DATASETS = ("cifar10", "cifar100")


def get_config(arg=None):
    model, dataset = choose(arg, [MODELS, DATASETS], [None, "cifar10"], "configs/cifar_preact.py")
    return cifar.paper_recipe(f"cifar_preact_{model}", dataset, warmup_steps=400)
