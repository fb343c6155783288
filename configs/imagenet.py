"""ImageNet ResNet-18/34/50/101/152 with the paper's recipe (He et al. 2015, section 3.4).

    python train.py --config configs/imagenet.py:resnet50 --workdir runs/imagenet_r50
    python eval.py --workdir runs/imagenet_r50 --config.data.eval_crop=ten_crop  # paper Table 3

Recipe: batch 256, SGD momentum 0.9, lr 0.1 per 256 images, weight decay 1e-4, 90 epochs. The paper
divides the lr by 10 "when the error plateaus"; that became the usual fixed /10 at epochs 30 and 60
(torchvision's reference; some runs add /10 at 80). Option B shortcuts, BN over groups of 32 images
(the paper's 8 GPUs x 32) whose running variance keeps the unbiased batch variance (as the paper's
Caffe models and torchvision's PyTorch), scale augmentation "paper_imagenet" with AlexNet's PCA
colour noise (the paper's "standard color augmentation"), per-pixel mean subtraction as the paper;
centre crop during training, 10-crop with the eval.py command above.
On one device that cannot hold 256 images, --config.accumulation_steps=8 runs each step as 8
micro-batches of 32, one BN group each: the same step within float32 rounding.
Bottleneck models are v1.5 (stride on the 3x3), as torchvision; --config.model.variant=v1 gives the
paper's own. Needs imagenet2012 prepared (python -m resnet_jax.data.prepare --dataset imagenet2012).

Expected top-1 error, 10-crop (paper Table 3, its own longer schedule): ResNet-50 22.85 %,
ResNet-101 21.75 %, ResNet-152 21.43 %; single centre crop, torchvision's v1 weights with this
schedule: ResNet-50 76.13 % top-1 (torchvision docs).
Expected time (estimate, not measured): ResNet-50, 90 epochs = 115M images; at the mixed-precision
2,400 img/s of one A100 (NVIDIA DLE) that is 13 hours; this config computes in float32 (TF32 on
A100/H100), so expect roughly twice that, or --config.model.dtype=bfloat16. ResNet-18/34/101/152
scale with their MACs (1.8/3.6/7.6/11.3 G against 3.8 G).
"""

from resnet_jax.config import base_config, choose

MODELS = ("resnet50", "resnet18", "resnet34", "resnet101", "resnet152")


def get_config(arg=None):
    (model,) = choose(arg, [MODELS], [MODELS[0]], "configs/imagenet.py")
    c = base_config()
    c.model.name = model
    c.model.shortcut = "B"
    c.model.bn_group_size = 32
    c.model.bn_unbiased_running_var = True
    c.data.dataset = "imagenet2012"
    c.data.image_size = 224
    c.data.train_augment = "paper_imagenet"  # scale augmentation, flip, PCA colour noise
    c.data.normalization = "per_pixel_mean"  # the paper: "the per-pixel mean subtracted"
    c.data.eval_crop = "center"
    c.global_batch_size = 256
    c.eval_batch_size = 400  # 125 batches of the 50,000 validation images
    c.schedule.name = "piecewise"
    c.schedule.unit = "epochs"
    c.schedule.length = 90.0
    c.schedule.boundaries = (30.0, 60.0)
    c.schedule.base_lr = 0.1
    c.schedule.base_batch_size = 256
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.log_every_steps = 100
    c.eval_every_steps = None  # every epoch
    c.checkpoint_every_steps = 5000
    return c
