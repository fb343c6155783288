"""Model summaries: parameters, multiply-accumulates and output shapes, per stage, without compute.

Counts come from abstract evaluation (`jax.eval_shape`), so even ResNet-1202 summarises in seconds.
Multiply-accumulates (MACs) count convolutions and the classifier, as torchvision's figures do:
a convolution costs H_out * W_out * C_out * kh * kw * C_in / groups per image.

    python -m resnet_jax.models.summary --model resnet50 --image_size 224
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import flags

from resnet_jax import cli
from resnet_jax.errors import FlagError
from resnet_jax.models.registry import create_model, list_models


@dataclasses.dataclass
class StageRow:
    """One line of a summary: a stem, a stage of blocks, or the head."""

    name: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclasses.dataclass
class ModelSummary:
    name: str
    image_size: int
    rows: list[StageRow]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def forward_flops(self) -> int:
        """FLOPs of one image's forward pass: 2 per multiply-accumulate."""
        return 2 * self.macs

    @property
    def train_flops(self) -> int:
        """FLOPs of one image's training step: the forward pass and a backward pass of twice it."""
        return 3 * self.forward_flops

    def format(self) -> str:
        lines = [f"{self.name} at {self.image_size}x{self.image_size} (per image)",
                 f"{'stage':<10}{'output shape':>22}{'parameters':>16}{'MACs':>18}"]
        for r in self.rows:
            lines.append(f"{r.name:<10}{str(r.output_shape):>22}{r.params:>16,}{r.macs:>18,}")
        lines.append(f"{'total':<10}{'':>22}{self.params:>16,}{self.macs:>18,}")
        lines.append(f"forward {self.macs / 1e9:.3f} GMACs; a training step costs about "
                     f"{6 * self.macs / 1e9:.2f} GFLOP per image")
        return "\n".join(lines)


def _layer_macs(module: nn.Module, inputs, output) -> int:
    if isinstance(module, nn.Conv):
        c_in = inputs[0].shape[-1]
        k = math.prod(module.kernel_size)
        return math.prod(output.shape[1:]) * k * c_in // module.feature_group_count
    if isinstance(module, nn.Dense):
        return inputs[0].shape[-1] * output.shape[-1]
    return 0


def _stage_of(path: tuple[str, ...]) -> str:
    top = path[0] if path else ""
    return top.split("_")[0] if top.startswith(("stage", "stem")) else "head"


def trace_model(model: nn.Module, image_size: int, channels: int = 3):
    """Abstractly run `model` on one image: returns (variables, per-stage MACs, per-stage output shape).

    variables holds jax.ShapeDtypeStruct leaves; shapes exclude the batch dimension.
    """
    macs: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.path:
            stage = _stage_of(context.module.path)
            macs[stage] = macs.get(stage, 0) + _layer_macs(context.module, args, out)
            if len(context.module.path) == 1 and hasattr(out, "shape"):
                shapes[stage] = tuple(out.shape[1:])
        return out

    def init():
        with nn.intercept_methods(interceptor):
            x = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
            return model.init(jax.random.key(0), x, train=False)

    variables = jax.eval_shape(init)
    return variables, macs, shapes


def count_params(params) -> int:
    """Number of trainable parameters (BatchNorm running statistics are not in `params`)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def summarize(name: str, image_size: int = 224, channels: int = 3, **options) -> ModelSummary:
    """Per-stage parameters, MACs and output shapes of the registered model `name` on images of
    [image_size, image_size, channels]."""
    return summarize_module(create_model(name, **options), name, image_size, channels)


def summarize_module(model: nn.Module, name: str, image_size: int,
                     channels: int = 3) -> ModelSummary:
    """summarize() of a model already built (`name`: how the summary names it)."""
    variables, macs, shapes = trace_model(model, image_size, channels)
    params_by_stage: dict[str, int] = {}
    for key, value in variables["params"].items():
        stage = _stage_of((key,))
        params_by_stage[stage] = params_by_stage.get(stage, 0) + count_params(value)
    rows = [StageRow(stage, shapes.get(stage, ()), params_by_stage.get(stage, 0), macs.get(stage, 0))
            for stage in sorted(macs, key=lambda s: (s != "stem", s == "head", s))]
    return ModelSummary(name, image_size, rows)


def flops_per_example(name: str, image_size: int, channels: int = 3,
                      **options) -> tuple[int, int]:
    """(forward FLOPs, training FLOPs) per image (ModelSummary.forward_flops, train_flops)."""
    summary = summarize(name, image_size, channels, **options)
    return summary.forward_flops, summary.train_flops


def define_flags() -> None:
    flags.DEFINE_string("model", None, "A registered model: " + ", ".join(list_models()),
                        required=True)
    flags.DEFINE_integer("image_size", None,
                         "Input side in pixels (default: 224 for ImageNet models, 32 for CIFAR).")
    flags.DEFINE_integer("num_classes", None, "Classifier outputs (default: the model's own).")


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    options = {} if f.num_classes is None else {"num_classes": f.num_classes}
    size = f.image_size or (32 if f.model.startswith("cifar_") else 224)
    try:
        summary = summarize(f.model, size, **options)
    except ValueError as e:
        raise FlagError(f"--model={f.model}: {e}") from None
    print(summary.format())


if __name__ == "__main__":
    define_flags()
    cli.run(main)
