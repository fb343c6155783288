"""Training throughput on synthetic data (Gaussian images, random labels; no dataset needed).

    python train.py --config configs/synthetic_benchmark.py:resnet50 --workdir runs/bench_r50
    grep '"split": "train"' runs/bench_r50/metrics.jsonl   # images_per_sec, mfu per log window

Argument: a model name (default resnet50). ImageNet models run 224x224x3 in bfloat16 at batch 256;
CIFAR models 32x32x3 in float32 at batch 128; 100 steps at constant lr. The first log window
includes no compilation (training starts its clock after step 1). For step timing without the host
input path, use python -m resnet_jax.benchmark.

Expected throughput (anchors, not measured here): ResNet-50 mixed precision about 2,400 img/s on one
A100 (NVIDIA DLE), about 6,900 img/s per H100 (MLPerf, derived); on CPU, cifar_resnet20 runs at a
few hundred img/s (measured: tests/test_configs.py runs it).
Expected time: 100 steps of ResNet-50 at batch 256 take about 10 s plus compilation on an A100.
"""

from resnet_jax.config import base_config, choose

MODELS = ("resnet50", "resnet18", "resnet101", "resnet152", "cifar_resnet20", "cifar_resnet56",
          "cifar_resnet110", "cifar_resnet8")


def get_config(arg=None):
    (model,) = choose(arg, [MODELS], [MODELS[0]], "configs/synthetic_benchmark.py")
    cifar = model.startswith("cifar_")
    c = base_config()
    c.model.name = model
    c.model.dtype = "float32" if cifar else "bfloat16"
    c.data.dataset = "synthetic"
    c.data.image_size = 32 if cifar else 224
    c.data.num_classes = 10 if cifar else 1000
    c.global_batch_size = 128 if cifar else 256
    c.eval_batch_size = c.global_batch_size
    c.data.num_train_examples = 8 * c.global_batch_size
    c.data.num_eval_examples = c.global_batch_size
    c.schedule.name = "constant"
    c.schedule.unit = "steps"
    c.schedule.length = 100.0
    c.schedule.boundaries = ()
    c.schedule.base_batch_size = c.global_batch_size
    c.log_every_steps = 10
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 1000
    c.tensorboard = False
    return c
