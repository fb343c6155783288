"""What a run will do, known before its first step: what the start-up header and --dry_run print.

A training run reads its plan off the experiment it built (`Experiment.plan`); `plan_run` makes the
same plan without building anything, for --dry_run and the experiment tables (a dataset that is not
prepared is planned from its published sizes).
"""

import dataclasses
from typing import Any, Optional

import jax

from resnet_jax import optim
from resnet_jax.config import model_options, validate_config
from resnet_jax.data import DataPlan, HostSlice, on_devices, plan_data
from resnet_jax.data.base import steps_per_epoch
from resnet_jax.models.summary import ModelSummary, summarize

# Train steps per dispatch when config.steps_per_dispatch is None, the examples are on the devices
# and the devices are GPUs or TPUs: a divisor of the paper's CIFAR log, eval and checkpoint
# intervals (100, 1000, 2000 steps), so every dispatch is a full one. On CPU the default is 1:
# XLA:CPU runs a loop body's convolutions several times slower (docs/performance.md), and a host
# pipeline would make each step wait for the batches of the next ones.
ACCELERATOR_STEPS_PER_DISPATCH = 20
# Dense bfloat16 peak FLOP/s per device, by a substring of jax's device_kind (for MFU); the first
# matching key wins, so more specific keys come first. H100 PCIe: NVIDIA's datasheet, 756 TFLOP/s
# dense (the SXM part: 989).
PEAK_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12,
              "TPU v4": 275e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12}


def peak_flops(device_kind: str) -> Optional[float]:
    """Dense bfloat16 peak FLOP/s of a `device_kind` device, or None where unknown (CPUs)."""
    return next((v for k, v in PEAK_FLOPS.items() if k in device_kind), None)


def resolve_steps_per_dispatch(config, on_devices: bool, platform: str) -> int:
    """config.steps_per_dispatch, or its default for data `on_devices` on a `platform` device."""
    if config.steps_per_dispatch:
        return config.steps_per_dispatch
    return ACCELERATOR_STEPS_PER_DISPATCH if on_devices and platform != "cpu" else 1


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a config will do on the devices present, known before the first step."""

    config: Any
    data: DataPlan
    model: ModelSummary
    device_count: int
    process_count: int
    device_kind: str
    on_devices: bool  # the examples are held on the devices (config.data.placement)
    steps_per_dispatch: int

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.data.num_train_examples, self.config.global_batch_size)

    @property
    def total_steps(self) -> int:
        return optim.total_steps(self.config.schedule, self.steps_per_epoch)

    @property
    def eval_every_steps(self) -> int:
        """config.eval_every_steps, or one epoch when unset."""
        return self.config.eval_every_steps or self.steps_per_epoch

    @property
    def peak_flops(self) -> Optional[float]:
        return peak_flops(self.device_kind)


def plan_run(config, device_count: Optional[int] = None) -> RunPlan:
    """Validate `config` and plan it without building it: data sizes without decoding an image (a
    dataset that is not prepared passes when its published sizes are known), the model traced
    abstractly. `device_count`: all devices if None."""
    device_count = device_count or jax.device_count()
    validate_config(config, device_count=device_count, process_count=jax.process_count(),
                    require_data=False)
    hosts = HostSlice(config.global_batch_size, config.eval_batch_size, jax.process_index(),
                      jax.process_count())
    data = plan_data(config.data, hosts, config.seed)
    size, _, channels = data.image_shape
    model = summarize(config.model.name, size, channels, num_classes=data.num_classes,
                      **model_options(config))
    placed = on_devices(config.data, hosts, config.seed)
    device = jax.devices()[0]
    return RunPlan(config, data, model, device_count, jax.process_count(), device.device_kind,
                   placed, resolve_steps_per_dispatch(config, placed, device.platform))
