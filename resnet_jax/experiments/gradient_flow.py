"""Per-block gradient norms and layer responses of plain and residual nets (the paper's Fig. 7).

    python -m resnet_jax.experiments.gradient_flow --model cifar_plain56 --model cifar_resnet56 \
        [--workdir runs/x ...] --out docs/gradient_flow.png [--json flow.json] [--title T]

For each block of a network, in forward order:
  grad_norm     ||d loss / d block output||_2 over the whole batch tensor [N, H, W, C], with the
                loss the mean softmax cross-entropy of the batch in training mode (BN batch
                statistics), as a training step sees it;
  response_std  the standard deviation, over all of [N, H, W, C], of the last layer of the block's
                residual branch before the addition: its BN output (post-activation), or its
                last convolution (pre-activation). Plain nets: the same layer. Evaluation mode
                (BN running statistics), as the paper measures trained networks; at initialisation
                the running statistics are mean 0, variance 1, so BN passes the convolution through.
Neither needs changes to the model: both come from flax's `nn.intercept_methods`, which adds a zero
perturbation to every block output (its gradient is d loss / d output) and records layer outputs.
`--model NAME` measures NAME at initialisation on the embedded digits; `--workdir DIR` measures the
run's initial state (same seed) and every checkpoint kept in DIR, on a batch of its training data.
"""

import json
import re
from typing import Any, Callable, Iterator, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from absl import flags  # noqa: E402

from resnet_jax import cli, storage  # noqa: E402
from resnet_jax.checkpoint import Checkpointer  # noqa: E402
from resnet_jax.config import base_config, config_from_dict  # noqa: E402
from resnet_jax.errors import FlagError  # noqa: E402
from resnet_jax.experiment import build_experiment  # noqa: E402
from resnet_jax.experiments.plot import save_figure  # noqa: E402
from resnet_jax.models.blocks import ResidualBlockBase  # noqa: E402
from resnet_jax.steps import cross_entropy  # noqa: E402

_LAYER = re.compile(r"(bn|conv)(\d+)$")


def _branch_output_layer(layers: dict[str, Any], preact: bool) -> Any:
    """The output of the last layer of a residual branch among `layers` ({"bn2": array, ...})."""
    kind = "conv" if preact else "bn"
    numbered = {int(m.group(2)): v for name, v in layers.items()
                if (m := _LAYER.match(name)) and m.group(1) == kind}
    return numbered[max(numbered)]


def _perturbing(eps: dict) -> Callable:
    """Interceptor adding eps[block name] to the output of every residual block."""
    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and isinstance(module, ResidualBlockBase):
            out = out + eps[module.name].astype(out.dtype)
        return out
    return interceptor


def _recording(store: dict) -> Callable:
    """Interceptor storing each block's numbered layer outputs as store[block][layer]."""
    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = context.module.path
        if context.method_name == "__call__" and len(path) == 2 and _LAYER.match(path[1]):
            store.setdefault(path[0], {})[path[1]] = out
        return out
    return interceptor


def make_block_statistics(model: nn.Module) -> Callable[..., dict[str, Any]]:
    """stats(variables, images, labels) -> {"blocks": [name, ...], "grad_norm": float64 [B],
    "response_std": float64 [B]} for `model`, with `variables` ({"params", "batch_stats"}),
    images [N, H, W, C] float32 and labels [N] int32. Compiled once per input shape."""

    def loss(eps, variables, images, labels):
        with nn.intercept_methods(_perturbing(eps)):
            logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
        return jnp.mean(cross_entropy(logits, labels, 0.0))

    def responses(variables, images):
        store: dict[str, dict] = {}
        with nn.intercept_methods(_recording(store)):
            model.apply(variables, images, train=False)
        return {block: jnp.std(_branch_output_layer(layers, model.preact).astype(jnp.float32))
                for block, layers in store.items()}

    def block_shapes(variables, images):
        shapes = {}

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and isinstance(context.module, ResidualBlockBase):
                shapes[context.module.name] = jax.ShapeDtypeStruct(out.shape, jnp.float32)
            return out

        with nn.intercept_methods(interceptor):
            jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
        return shapes

    grad_fn, responses_fn = jax.jit(jax.grad(loss)), jax.jit(responses)

    def stats(variables, images, labels):
        shapes = block_shapes(variables, images)
        names = list(shapes)  # insertion order = forward order
        zeros = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}
        grads = grad_fn(zeros, variables, images, labels)
        stds = responses_fn(variables, images)
        return {"blocks": names,
                "grad_norm": np.array([float(jnp.linalg.norm(grads[k])) for k in names]),
                "response_std": np.array([float(stds[k]) for k in names])}

    return stats


def _batch(exp, batch_size: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    batch = next(exp.pipeline.train_batches(0))
    return jnp.asarray(batch["image"][:batch_size]), jnp.asarray(batch["label"][:batch_size])


def _variables(state) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def measure_model(name: str, batch_size: int = 128, seed: int = 0) -> dict[str, Any]:
    """Statistics of registered model `name` at initialisation on a digits training batch."""
    config = base_config()
    config.model.name, config.seed = name, seed
    config.global_batch_size = batch_size
    exp = build_experiment(config, jax.devices()[:1])
    images, labels = _batch(exp, batch_size)
    stats = make_block_statistics(exp.model)
    return {"label": name, "step": 0, **stats(_variables(exp.create_train_state()), images, labels)}


def measure_workdir(workdir: str, batch_size: int = 128) -> Iterator[dict[str, Any]]:
    """Statistics of the run in `workdir` at initialisation and at each kept checkpoint."""
    config = config_from_dict(json.loads((storage.path(workdir) / "config.json").read_text()))
    exp = build_experiment(config, jax.devices()[:1])
    images, labels = _batch(exp, batch_size)
    label = storage.path(workdir).name
    stats = make_block_statistics(exp.model)
    yield {"label": label, "step": 0, **stats(_variables(exp.create_train_state()), images, labels)}
    checkpointer = Checkpointer(storage.path(workdir) / "checkpoints", read_only=True)
    try:
        for step in checkpointer.all_steps():
            restored = checkpointer.restore(step, exp.abstract_train_state()).state
            yield {"label": label, "step": step,
                   **stats(_variables(restored), images, labels)}
    finally:
        checkpointer.close()


def plot_block_statistics(results: list[dict], out: str, title: Optional[str] = None) -> str:
    """Two panels against block index, both log scale: gradient norm and response std; one colour
    per run, dashed at initialisation, then solid and darker for later checkpoints. Saves a PNG."""
    fig, (ax_grad, ax_std) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = list(dict.fromkeys(r["label"] for r in results))
    last_step = {label: max(r["step"] for r in results if r["label"] == label) for label in labels}
    for r in results:
        color = f"C{labels.index(r['label'])}"
        init = r["step"] == 0
        alpha = 1.0 if init else 0.35 + 0.65 * r["step"] / last_step[r["label"]]
        name = f"{r['label']} {'init' if init else 'step ' + str(r['step'])}"
        index = np.arange(1, len(r["blocks"]) + 1)
        for ax, key in ((ax_grad, "grad_norm"), (ax_std, "response_std")):
            ax.plot(index, r[key], "--" if init else "-", color=color, alpha=alpha, label=name)
    ax_grad.set_ylabel("||d loss / d block output|| (train mode)")
    ax_std.set_ylabel("std of the branch's last layer (eval mode)")
    for ax in (ax_grad, ax_std):
        ax.set_yscale("log")
        ax.set_xlabel("block index (forward order)")
        ax.grid(alpha=0.3)
    ax_std.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out)


def define_flags() -> None:
    flags.DEFINE_multi_string("model", [], "A registered model name (repeatable).")
    flags.DEFINE_multi_string("workdir", [], "A training run directory (repeatable).")
    flags.DEFINE_integer("batch_size", 128, "Digits per measurement.")
    flags.DEFINE_string("out", None, "PNG path.", required=True)
    flags.DEFINE_string("json", None, "Also write the numbers here.")
    flags.DEFINE_string("title", None, "Figure title.")


def main(argv) -> None:
    del argv
    args = flags.FLAGS
    if not args.model and not args.workdir:
        raise FlagError("give at least one --model or --workdir")
    results = [measure_model(m, args.batch_size) for m in args.model]
    for workdir in args.workdir:
        results.extend(measure_workdir(workdir, args.batch_size))
    for r in results:
        g, s = r["grad_norm"], r["response_std"]
        print(f"{r['label']:>28} step {r['step']:>6}: grad norm first/last block "
              f"{g[0]:.3g}/{g[-1]:.3g}, response std mean {s.mean():.3g} "
              f"(min {s.min():.3g}, max {s.max():.3g})")
    if args.json:
        storage.write_atomic(args.json, json.dumps(
            [{**r, "grad_norm": r["grad_norm"].tolist(),
              "response_std": r["response_std"].tolist()} for r in results], indent=1))
    print(plot_block_statistics(results, args.out, args.title))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
