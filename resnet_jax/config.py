"""The configuration schema shared by every experiment, and its validation.

`base_config()` returns the schema with defaults; experiment files in configs/ start from it and
change fields, so every config has the same fields and types. `validate_config` checks a config
against the schema and against the devices present, before any compute, and raises ConfigError
naming the field and what is allowed.
"""

from typing import Any, Callable, Optional, Sequence

import ml_collections
from ml_collections.config_dict import placeholder

from resnet_jax import optim
from resnet_jax.data import validate_data_config
from resnet_jax.errors import ConfigError
from resnet_jax.models import registry


def base_config() -> ml_collections.ConfigDict:
    """The schema: every field a config may have, with its default."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.global_batch_size = 128
    c.eval_batch_size = 256
    c.label_smoothing = 0.0
    # Micro-batches per step: each step's batch is run in this many slices, one optimizer update on
    # their mean gradient (steps.make_train_step); must divide the per-device batch.
    c.accumulation_steps = 1

    c.model = ml_collections.ConfigDict()
    c.model.name = "cifar_resnet20"
    c.model.dtype = "float32"
    c.model.shortcut = placeholder(str)
    c.model.variant = placeholder(str)
    c.model.zero_init_residual = False
    c.model.bn_momentum = 0.9
    c.model.bn_epsilon = 1e-5
    c.model.bn_group_size = placeholder(int)
    # The running variance from the unbiased batch variance n / (n - 1), n = values of a channel in
    # a BatchNorm group, as PyTorch and Caffe; the batch is normalised by the biased one either way.
    c.model.bn_unbiased_running_var = False
    c.model.remat = False  # recompute each residual block's activations in the backward pass

    # Input pipeline (docs/data.md describes every field). None = the dataset's default.
    c.data = ml_collections.ConfigDict()
    c.data.dataset = "digits"  # digits, synthetic, cifar10, cifar100, imagenet2012, tfds, folder
    c.data.tfds_name = placeholder(str)  # dataset="tfds": a TFDS dataset with an image and a label
    c.data.data_dir = placeholder(str)  # TFDS data_dir (None: TFDS's default ~/tensorflow_datasets)
    c.data.manual_dir = placeholder(str)  # manually downloaded archives (imagenet2012)
    c.data.folder = placeholder(str)  # dataset="folder": <folder>/<split>/<class>/<image>
    c.data.train_split = placeholder(str)  # TFDS split syntax, e.g. "train[:45000]" (None: train)
    c.data.eval_split = placeholder(str)  # e.g. "train[45000:]" (None: test or validation)
    c.data.image_size = 32
    c.data.channels = 3
    c.data.train_augment = placeholder(str)  # paper_imagenet, inception, cifar, none
    c.data.eval_crop = "center"  # center, ten_crop, multi_scale
    c.data.eval_scales = (224, 256, 384, 480, 640)  # shorter sides for eval_crop="multi_scale"
    c.data.resize_size = placeholder(int)  # eval shorter side (None: 256 at 224; CIFAR: image_size)
    # per_channel, per_pixel_mean, torchvision; None: the init_from source's (torchvision weights:
    # torchvision; a checkpoint of ours: its own), else per_channel (pretrained.py).
    c.data.normalization = placeholder(str)
    c.data.shuffle_buffer = placeholder(int)  # stream TFDS records via this buffer (None: auto)
    c.data.placement = "auto"  # examples on the host, on the devices, or auto (data/__init__.py)
    c.data.max_shift = 1  # digits: random shift in pixels
    c.data.num_classes = 10  # synthetic
    c.data.num_train_examples = 1024  # synthetic
    c.data.num_eval_examples = 256  # synthetic

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "piecewise"
    c.schedule.unit = "epochs"
    c.schedule.length = 30.0
    c.schedule.base_lr = 0.1
    c.schedule.base_batch_size = 256
    c.schedule.boundaries = (15.0, 25.0)
    c.schedule.decay_factor = 0.1
    c.schedule.warmup = 0.0
    c.schedule.warmup_mode = "linear"
    c.schedule.warmup_factor = 0.1

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 1e-4
    c.optimizer.weight_decay_mode = "l2"
    c.optimizer.exclude_bn_and_bias = False
    c.optimizer.grad_clip_norm = 0.0
    # A linear probe: only the classifier ("head") trains; every other parameter and every
    # BatchNorm statistic stays as loaded, BatchNorm in inference mode.
    c.optimizer.freeze_backbone = False
    # Discriminative fine-tuning: the learning rate of every parameter but the classifier's is
    # multiplied by this (e.g. 0.1).
    c.optimizer.backbone_lr_multiplier = 1.0

    # Start a new run from pretrained weights (pretrained.py): a workdir of ours (its newest verified
    # checkpoint), a step folder <workdir>/checkpoints/<step>, or torchvision weights (.safetensors,
    # or .pth with PyTorch installed); local or gs://. Parameters and BatchNorm statistics are
    # loaded, optimizer state and step start fresh. A run with checkpoints of its own resumes them.
    c.init_from = placeholder(str)
    # The classifier: "auto" keeps the source's when the class counts match, else re-initialises
    # it; "keep" (an error when they differ) or "reinit".
    c.init_head = "auto"

    # Train steps run by one dispatch (a scan inside one compiled function); None: 20 when the data
    # are on GPUs or TPUs, else 1 (experiment.py says why). Log, eval and checkpoint steps end a
    # dispatch, so they are reached exactly.
    c.steps_per_dispatch = placeholder(int)
    c.log_every_steps = 50
    c.eval_every_steps = placeholder(int)
    c.checkpoint_every_steps = 500
    # Also save at every eval step, so that keep-best chooses among all evaluated steps; otherwise
    # only steps that are multiples of checkpoint_every_steps (and the last) are saved.
    c.checkpoint_at_eval = False
    c.keep_checkpoints = 3
    # An exponential moving average of the parameters and BN statistics, updated after every step:
    # ema = ema_decay * ema + (1 - ema_decay) * new; evaluated beside the raw weights (ema_top1,
    # ...) and checkpointed with them (eval.py --ema evaluates it). None: off.
    c.ema_decay = placeholder(float)
    # The eval metric by which keep-best keeps a checkpoint: "top1" (the raw weights) or "ema_top1"
    # (the EMA weights; needs ema_decay).
    c.best_metric = "top1"
    c.async_checkpointing = True
    c.tensorboard = True
    # (a, b): a jax.profiler trace of train steps a .. b-1 (0-based) on process 0, written to
    # <workdir>/profile (README: Profiling). Dispatches holding any of them are traced whole.
    c.profile_steps = placeholder(tuple)
    return c


def config_from_dict(values: dict) -> ml_collections.ConfigDict:
    """The schema updated with `values` (e.g. a config stored as JSON); lists become tuples where
    the schema has a tuple. Unknown fields raise ConfigError."""
    config = base_config()

    def update(target, source, prefix):
        for key, value in source.items():
            if key not in target:
                raise ConfigError(f"unknown config field {prefix + key!r}")
            if isinstance(target[key], ml_collections.ConfigDict):
                update(target[key], value, prefix + key + ".")
            else:
                target[key] = tuple(value) if isinstance(target[key], tuple) else value

    update(config, values, "")
    return config


def flat_fields(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"model.name": value, ...}: the fields of a nested config dict (ConfigDict.to_dict())."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_fields(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def model_options(config) -> dict[str, Any]:
    """Keyword options for registry.create_model from config.model (unset placeholders omitted)."""
    return {k: v for k, v in config.model.items() if k != "name" and v is not None}


BEST_METRICS = ("top1", "ema_top1")
Check = Callable[[Any], bool]
INIT_HEADS = ("auto", "keep", "reinit")
_RULES: list[tuple[str, Check, str]] = [
    ("seed", lambda v: v >= 0, "a non-negative int"),
    ("global_batch_size", lambda v: v > 0, "a positive int"),
    ("eval_batch_size", lambda v: v > 0, "a positive int"),
    ("label_smoothing", lambda v: 0 <= v < 1, "a float in [0, 1)"),
    ("accumulation_steps", lambda v: v > 0, "a positive int"),
    ("schedule.name", lambda v: v in optim.SCHEDULES, f"one of {optim.SCHEDULES}"),
    ("schedule.unit", lambda v: v in optim.UNITS, f"one of {optim.UNITS}"),
    ("schedule.length", lambda v: v > 0, "a positive number"),
    ("schedule.base_lr", lambda v: v > 0, "a positive float"),
    ("schedule.base_batch_size", lambda v: v > 0, "a positive int"),
    ("schedule.decay_factor", lambda v: 0 < v <= 1, "a float in (0, 1]"),
    ("schedule.warmup", lambda v: v >= 0, "a non-negative number"),
    ("schedule.warmup_mode", lambda v: v in optim.WARMUPS, f"one of {optim.WARMUPS}"),
    ("schedule.warmup_factor", lambda v: 0 < v <= 1, "a float in (0, 1]"),
    ("optimizer.momentum", lambda v: 0 <= v < 1, "a float in [0, 1)"),
    ("optimizer.weight_decay", lambda v: v >= 0, "a non-negative float"),
    ("optimizer.weight_decay_mode", lambda v: v in optim.WEIGHT_DECAY_MODES,
     f"one of {optim.WEIGHT_DECAY_MODES}"),
    ("optimizer.grad_clip_norm", lambda v: v >= 0, "a non-negative float (0 disables clipping)"),
    ("optimizer.backbone_lr_multiplier", lambda v: v > 0,
     "a positive float (freeze the backbone with optimizer.freeze_backbone=True)"),
    ("init_head", lambda v: v in INIT_HEADS, f"one of {INIT_HEADS}"),
    ("steps_per_dispatch", lambda v: v is None or v > 0, "a positive int, or None for the default"),
    ("log_every_steps", lambda v: v > 0, "a positive int"),
    ("eval_every_steps", lambda v: v is None or v > 0, "a positive int, or None for every epoch"),
    ("checkpoint_every_steps", lambda v: v > 0, "a positive int"),
    # Two at least, so that the newest verified checkpoint outlives the save of the next one
    # (MIN_KEEP in checkpoint/checkpointer.py says why).
    ("keep_checkpoints", lambda v: v >= 2, "an int of at least 2"),
    ("ema_decay", lambda v: v is None or 0 < v < 1, "a float in (0, 1), or None for no EMA"),
    ("best_metric", lambda v: v in BEST_METRICS, f"one of {BEST_METRICS}"),
    ("profile_steps", lambda v: v is None or (
        len(v) == 2 and all(isinstance(s, int) and not isinstance(s, bool) for s in v)
        and 0 <= v[0] < v[1]), "a pair of ints (a, b) with 0 <= a < b, or None for no profile"),
]


def _get(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def _check_schema(config, schema, prefix: str = "") -> None:
    """Every field of `config` exists in `schema` with a compatible type."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(f"unknown config field {name!r}; fields here: "
                              f"{', '.join(sorted(prefix + k for k in schema.keys()))}")
        expected = schema[key]
        if isinstance(expected, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(f"config field {name!r} must be a group of fields")
            _check_schema(value, expected, name + ".")
            continue
        field_type = schema.get_type(key) if hasattr(schema, "get_type") else type(expected)
        if value is None or field_type is type(None):
            continue
        numeric = field_type is float and isinstance(value, int) and not isinstance(value, bool)
        if not (isinstance(value, field_type) or numeric):
            raise ConfigError(f"config field {name!r}={value!r} has type {type(value).__name__}; "
                              f"expected {field_type.__name__}")


def validate_config(config, device_count: Optional[int] = None,
                    process_count: int = 1, training: bool = True,
                    require_data: bool = True) -> None:
    """Raise ConfigError for the first field that is not allowed; returns None when all is well.

    device_count and process_count are those of the run (global); divisibility is checked against them:
    of the eval batch always, of the train batch, its micro-batches and its BatchNorm groups only
    when `training` (evaluating a checkpoint on another device count needs only the eval batch to
    divide).
    Without `require_data` a dataset that is not prepared passes (planning a run, --dry_run).
    """
    _check_schema(config, base_config())
    for field, ok, allowed in _RULES:
        value = _get(config, field)
        if not ok(value):
            raise ConfigError(f"config.{field}={value!r} is not allowed; expected {allowed}")
    if config.schedule.name == "piecewise":
        if any(b <= 0 or b >= config.schedule.length for b in config.schedule.boundaries):
            raise ConfigError(f"config.schedule.boundaries={tuple(config.schedule.boundaries)} must "
                              f"lie inside (0, schedule.length={config.schedule.length})")
    if config.optimizer.freeze_backbone and config.optimizer.backbone_lr_multiplier != 1:
        raise ConfigError(f"config.optimizer.backbone_lr_multiplier="
                          f"{config.optimizer.backbone_lr_multiplier!r} has no effect with "
                          "optimizer.freeze_backbone=True (the backbone does not train); leave it 1")
    try:
        registry.validate_options(config.model.name, model_options(config))
    except ValueError as e:
        raise ConfigError(f"config.model: {e}") from None
    validate_data_config(config.data, require_data)
    for field in ("global_batch_size", "eval_batch_size") if training else ("eval_batch_size",):
        value = config[field]
        for count, what in ((device_count, "devices"), (process_count, "processes")):
            if count and value % count:
                raise ConfigError(f"config.{field}={value} is not divisible by the {count} {what}; "
                                  f"use a multiple of {count}")
    if config.best_metric == "ema_top1" and config.ema_decay is None:
        raise ConfigError("config.best_metric='ema_top1' needs config.ema_decay (the EMA is off)")
    if device_count and training:
        per_device = config.global_batch_size // device_count
        batch, where = per_device, f"(global_batch_size / {device_count} devices)"
        steps = config.accumulation_steps
        if per_device % steps:
            raise ConfigError(f"config.accumulation_steps={steps} must divide the per-device batch "
                              f"{per_device} {where}")
        if steps > 1:
            batch //= steps
            where = f"(global_batch_size / {device_count} devices / {steps} accumulation_steps)"
        group = config.model.bn_group_size
        if group and batch % group:
            raise ConfigError(f"config.model.bn_group_size={group} must divide the per-device "
                              f"{'micro-' if steps > 1 else ''}batch {batch} {where}")


def choose(arg: Optional[str], allowed: Sequence[Sequence[str]],
           defaults: Sequence[Optional[str]], family: str) -> tuple[str, ...]:
    """Parse "a,b" into one value per position of `allowed`; missing trailing parts take `defaults`
    (None: required). Raises ConfigError listing the allowed values of `family` (a config file)."""
    parts = [p.strip() for p in arg.split(",")] if arg else []
    usage = ",".join("{" + "|".join(a) + "}" for a in allowed)
    if len(parts) > len(allowed):
        raise ConfigError(f"{family}: too many parts in {arg!r}; expected {usage}")
    chosen = []
    for i, options in enumerate(allowed):
        value = parts[i] if i < len(parts) else defaults[i]
        if value not in options:
            raise ConfigError(f"{family}: {value!r} is not allowed; expected {usage} "
                             f"(e.g. {family}:{','.join(a[0] for a in allowed)})")
        chosen.append(value)
    return tuple(chosen)
