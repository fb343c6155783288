"""Every experiment config in configs/ (every file, every argument) loads, validates and builds its
model abstractly; the small ones train a few steps."""

import importlib.util
import math
from pathlib import Path

import pytest

from resnet_jax import data as data_lib
from resnet_jax.config import model_options, validate_config
from resnet_jax.models import create_model
from resnet_jax.training import train_and_evaluate
from model_traces import one_block_per_stage, traced
from train_cli import MODEL

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# A folder's class count is its own; 37 (Oxford-IIIT Pets) stands for one.
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000, "digits": 10, "folder": 37}

# Trainable parameters (REFERENCE.md): CIFAR option A and torchvision's ImageNet models.
REFERENCE_PARAMS = {
    "cifar_resnet20": 269_722, "cifar_resnet32": 464_154, "cifar_resnet44": 658_586,
    "cifar_resnet56": 853_018, "cifar_resnet110": 1_727_962, "cifar_resnet1202": 19_421_274,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
}


def load(file: str):
    spec = importlib.util.spec_from_file_location(f"configs_{Path(file).stem}", CONFIGS / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def arguments(file: str) -> list:
    """Every argument `file` accepts (None: the file takes none or has a default)."""
    module = load(file)
    if file == "cifar_preact.py":
        return [f"{m},{d}" for m in module.MODELS for d in module.DATASETS]
    if file == "finetune.py":
        return list(module.MODES)
    return list(getattr(module, "MODELS", [None]))


ALL = [(f.name, arg) for f in sorted(CONFIGS.glob("*.py")) for arg in arguments(f.name)]


@pytest.fixture
def no_dataset_check(monkeypatch):
    """Validate every data field but the presence of prepared files (cifar10, imagenet2012)."""
    monkeypatch.setattr(data_lib, "check_dataset", lambda data_config: None)


@pytest.mark.parametrize("file,arg", ALL, ids=[f"{f}:{a}" for f, a in ALL])
def test_config_validates_and_builds(file, arg, no_dataset_check):
    module = load(file)
    config = module.get_config(arg) if arg else module.get_config()
    for devices in (1, 8):
        validate_config(config, device_count=devices)
    c = config.data
    classes = c.num_classes if c.dataset == "synthetic" else NUM_CLASSES[c.dataset]
    size, channels = (8, 1) if c.dataset == "digits" else (c.image_size, c.channels)
    # dtype does not change shapes: configs differing only in dtype share a trace.
    options = {k: v for k, v in model_options(config).items() if k != "dtype"}
    model = create_model(config.model.name, num_classes=classes, **options)
    expected = REFERENCE_PARAMS.get(config.model.name)
    if expected and classes in (10, 1000) and channels == 3:
        assert traced(model, size, channels)[0] == expected
    else:  # nothing to count: every kind of block and the head, one block per stage
        model = one_block_per_stage(model)
    assert traced(model, size, channels)[1] == (classes,)


def test_recipes_match_the_papers():
    r56, r110 = load("cifar.py").get_config("resnet56"), load("cifar.py").get_config("resnet110")
    assert (r56.global_batch_size, r56.schedule.base_lr, r56.schedule.length) == (128, 0.1, 64000)
    assert r56.schedule.boundaries == (32000.0, 48000.0) and r56.schedule.warmup == 0
    assert (r110.schedule.warmup, r110.schedule.warmup_mode) == (400.0, "constant")
    assert math.isclose(r110.schedule.base_lr * r110.schedule.warmup_factor, 0.01)
    assert load("cifar.py").get_config("plain56").model.name == "cifar_plain56"
    r50 = load("imagenet.py").get_config("resnet50")
    assert (r50.global_batch_size, r50.schedule.boundaries, r50.schedule.length) == (
        256, (30.0, 60.0), 90.0)
    assert (r50.model.shortcut, r50.model.bn_group_size, r50.data.train_augment) == (
        "B", 32, "paper_imagenet")  # scale augmentation with the paper's PCA colour noise
    assert r56.data.normalization == r50.data.normalization == "per_pixel_mean"  # the paper's
    modern = load("imagenet_modern.py").get_config()
    # PyTorch's and Caffe's running variance in the ImageNet recipes; the CIFAR ones keep Flax's.
    assert r50.model.bn_unbiased_running_var and modern.model.bn_unbiased_running_var
    assert not r56.model.bn_unbiased_running_var
    assert modern.optimizer.nesterov and modern.optimizer.exclude_bn_and_bias
    assert (modern.schedule.name, modern.schedule.warmup, modern.label_smoothing) == (
        "cosine", 5.0, 0.1)
    preact = load("cifar_preact.py").get_config("resnet1001,cifar100")
    assert (preact.model.name, preact.data.dataset) == ("cifar_preact_resnet1001", "cifar100")
    assert load("cifar_preact.py").get_config("resnet164").data.dataset == "cifar10"


@pytest.mark.parametrize("file,arg,allowed", [
    ("cifar.py", "resnet57", "resnet56"), ("cifar.py", None, "plain110"),
    ("cifar_preact.py", "resnet164,cifar1000", "cifar100"),
    ("cifar_preact.py", "resnet164,cifar10,x", "resnet1001"),
    ("imagenet.py", "resnet200", "resnet152"), ("synthetic_benchmark.py", "vgg16", "resnet50"),
])
def test_unknown_argument_lists_the_allowed_ones(file, arg, allowed):
    with pytest.raises(ValueError, match=allowed):
        load(file).get_config(arg)


def _few_steps(config):
    config.global_batch_size = config.eval_batch_size = 32
    config.schedule.unit, config.schedule.length = "steps", 3.0
    config.schedule.boundaries = (1.0, 2.0) if config.schedule.name == "piecewise" else ()
    config.schedule.warmup = min(config.schedule.warmup, 1.0)
    config.log_every_steps = config.eval_every_steps = 3
    config.async_checkpointing, config.tensorboard = False, False
    return config


def test_cifar_recipe_on_digits_trains(tmp_path):
    """The CIFAR recipe (its schedule with warm-up, augmentation and optimizer) trains on the
    digits. configs/synthetic_benchmark.py trains in the smoke report's loop section
    (test_accelerator_report.py)."""
    cifar = _few_steps(load("cifar.py").get_config("resnet110"))
    cifar.model.name, cifar.data.dataset = MODEL, "digits"
    result = train_and_evaluate(cifar, str(tmp_path))
    assert result["step"] == 3 and math.isfinite(result["eval"]["loss"])
