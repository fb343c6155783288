"""torchvision's ImageNet ResNet-50 fine-tuned on your own image folder, or a linear probe of it.

    # torchvision's IMAGENET1K_V1 weights (download.pytorch.org/models/resnet50-0676ba61.pth;
    # reading .pth needs PyTorch, else convert it once to .safetensors where torch is installed)
    python train.py --config configs/finetune.py --workdir runs/pets_finetune \
      --config.init_from=resnet50-0676ba61.pth --config.data.folder=/data/pets
    python train.py --config configs/finetune.py:linear_probe --workdir runs/pets_probe \
      --config.init_from=resnet50-0676ba61.pth --config.data.folder=/data/pets

The folder is laid out <folder>/<split>/<class>/<image> (docs/data.md); init_from may also be a
workdir of ours or a step folder, local or gs://. The weights bring torchvision's normalisation
and eval crop (shorter side 256, centre 224); the classifier is re-initialised for the folder's
class count; the header says what was loaded. The run's config.json records the normalisation,
so `python eval.py --workdir runs/pets_finetune` evaluates it the same way.

fine_tune:    every layer trains, the backbone at a tenth of the classifier's learning rate
              (peak 0.1 for the classifier, 0.01 for the backbone at batch 64), cosine over 30
              epochs, L2 weight decay 1e-4, inception crops.
linear_probe: only the classifier trains (peak lr 0.1, cosine over 30 epochs, no weight decay);
              every other parameter and every BatchNorm statistic stays bitwise as loaded.

Expected and time: not run here (no GPU, no internet on the machine that wrote this). Fine-tuning
usually ends above the linear probe (Kornblith et al. 2019, "Do Better ImageNet Models Transfer
Better?", compare both settings on 12 datasets). For a folder of 3,680 train images (the size of
Oxford-IIIT Pets) 30 epochs are 110,400 images: under a minute of steps at the 2,400 img/s of one
A100 in mixed precision that configs/imagenet_modern.py quotes (NVIDIA DeepLearningExamples),
longer in this config's float32 (add --config.model.dtype=bfloat16), plus compilation and the
per-epoch evaluations: an estimate, not measured. The linear probe runs no backward pass through
the backbone and is faster.
"""

from resnet_jax.config import base_config, choose

MODES = ("fine_tune", "linear_probe")


def get_config(arg=None):
    (mode,) = choose(arg, [MODES], [MODES[0]], "configs/finetune.py")
    c = base_config()
    c.model.name = "resnet50"
    c.data.dataset = "folder"
    c.data.image_size = 224
    c.data.train_augment = "inception"
    c.global_batch_size = 64
    c.eval_batch_size = 128
    c.schedule.name = "cosine"
    c.schedule.length = 30.0
    c.schedule.boundaries = ()
    c.schedule.base_lr = 0.4  # peak 0.1 at batch 64 (linear scaling from 256)
    c.optimizer.weight_decay = 1e-4
    if mode == "linear_probe":
        c.optimizer.freeze_backbone = True
        c.optimizer.weight_decay = 0.0
    else:
        c.optimizer.backbone_lr_multiplier = 0.1
    c.log_every_steps = 20
    c.checkpoint_at_eval = True  # eval every epoch (the default); keep the best of them
    return c
