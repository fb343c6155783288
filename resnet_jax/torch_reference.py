"""The PyTorch reference for resnet_jax.benchmark: torchvision's ResNet on one CUDA GPU.

    python -m resnet_jax.torch_reference --model resnet50 --batch_size 256 --image_size 224 \
        --dtype bfloat16 --steps 50 --warmup 10 --json torch.json

Same flags, timing windows and JSON fields as the benchmark, so the two files compare row by row.
The train step is the common fast recipe: torchvision `--model` (v1.5 bottlenecks, as the registry's
default) in channels_last, `torch.compile` as a static graph of each batch size (`compile_static`),
autocast to `--dtype` (float32: none), cuDNN autotuning, cross-entropy, SGD (momentum 0.9, weight
decay 1e-4 added to the gradient, as config "l2"). The eval step is the compiled forward in eval
mode. Data: one synthetic batch on the GPU, reused every step.
`compile_s` is the wall time of the first call (torch compiles on it), one step included. Peak
memory is torch.cuda.max_memory_allocated, reset before each batch size. `TORCHDYNAMO_DISABLE=1`
runs it eagerly. The JSON's "machine" names the host CPU ("cpu") and the GPU ("device_kind").
torch and torchvision are imported only here, on the GPU machine; without them or without a CUDA GPU
the command stops with a one-line error.
"""

import dataclasses
import os
import platform
import sys
import time
from typing import Any, Callable

from resnet_jax import benchmark, cli
from resnet_jax.convert import TORCHVISION_MODELS
from resnet_jax.errors import FlagError, UserError
from resnet_jax.models.summary import flops_per_example


def validate(opts: benchmark.Options) -> None:
    """Raise FlagError for what the reference cannot do, before torch is imported."""
    if opts.model not in TORCHVISION_MODELS:
        raise FlagError(f"--model {opts.model!r} has no torchvision counterpart; use one of "
                         f"{', '.join(TORCHVISION_MODELS)}")
    if ((opts.devices or 1) != 1 or opts.bn_group_size or opts.steps_per_dispatch != 1
            or opts.remat != (False,) or opts.accumulation_steps != 1):
        raise FlagError("the PyTorch reference runs on one GPU with whole-batch BatchNorm, one "
                        "step per call, no rematerialisation or accumulation: leave out "
                        "--devices, --bn_group_size, --steps_per_dispatch, --remat and "
                        "--accumulation_steps")
    benchmark.validate(opts, available_devices=1)


def require_cuda():
    """(torch, torchvision) for a run on a CUDA GPU; UserError with a one-line reason if either is
    missing or torch sees no CUDA GPU."""
    try:
        import torch
    except ImportError as e:
        raise UserError(f"the PyTorch reference needs torch and torchvision ({e})") from None
    if not torch.cuda.is_available():
        raise UserError(f"the PyTorch reference needs a CUDA GPU; torch {torch.__version__} "
                           f"sees none (torch.cuda.is_available() is False)")
    try:
        import torchvision
    except ImportError as e:
        raise UserError(f"the PyTorch reference needs torch and torchvision ({e})") from None
    return torch, torchvision


def compile_static(model, backend: str | Callable = "inductor"):
    """torch.compile(model) specialised to the shapes of its first call, compiled as if it were the
    first model of the process: dynamo's caches are cleared and dynamic=False. Without this, the
    second batch size of a sweep compiles a graph with a symbolic batch dimension that every later
    size reuses, so their compile and step times are not comparable; and past dynamo's recompile
    limit (8) later sizes would silently run eagerly. `backend` is torch.compile's."""
    import torch

    torch._dynamo.reset()
    return torch.compile(model, dynamic=False, backend=backend)


def _machine(torch) -> dict[str, Any]:
    return {"cpu": benchmark.cpu_model(), "cpu_count": os.cpu_count(), "os": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "backend": "cuda",
            "device_kind": torch.cuda.get_device_name(), "local_devices": 1}


def run(opts: benchmark.Options) -> dict[str, Any]:
    """Measure every batch size: {"options", "machine", "results"} as benchmark.run returns.

    Keep JAX off the GPU in this process (JAX_PLATFORMS=cpu, as main sets): the model summary that
    gives the FLOPs runs through JAX, which would otherwise take most of the GPU's memory."""
    validate(opts)
    opts = benchmark.resolved(opts)
    torch, torchvision = require_cuda()
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(opts.seed)
    cuda = torch.device("cuda")
    kind = torch.cuda.get_device_name()
    flops = dict(zip(("eval", "train"), flops_per_example(opts.model, opts.image_size,
                                                          num_classes=opts.num_classes)))

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=opts.dtype == "bfloat16")

    rows = []
    for batch_size in opts.batch_sizes:
        model = getattr(torchvision.models, opts.model)(num_classes=opts.num_classes)
        model = model.to(cuda, memory_format=torch.channels_last)
        params = sum(p.numel() for p in model.parameters())
        compiled = compile_static(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        images = torch.randn(batch_size, 3, opts.image_size, opts.image_size, device=cuda)
        images = images.contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, opts.num_classes, (batch_size,), device=cuda)

        def train_step():
            with autocast():
                loss = torch.nn.functional.cross_entropy(compiled(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss.detach()

        @torch.no_grad()
        def eval_step():
            with autocast():
                return compiled(images)

        torch.cuda.reset_peak_memory_stats()
        for mode in ("train", "eval") if opts.mode == "both" else (opts.mode,):
            print(f"[torch_reference] {opts.model} batch {batch_size}: {mode} step",
                  file=sys.stderr, flush=True)
            model.train(mode == "train")
            step = train_step if mode == "train" else eval_step
            start = time.perf_counter()
            step()
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - start
            for _ in range(opts.warmup):
                step()
            torch.cuda.synchronize()
            timed = benchmark.time_windows(step, opts.steps, opts.windows,
                                           wait=lambda _: torch.cuda.synchronize())
            memory = (torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated")
            rows.append(benchmark.result_row(mode, params, batch_size, 1, kind, flops[mode],
                                             compile_s, timed, memory))
    return {"options": dataclasses.asdict(opts), "machine": _machine(torch), "results": rows}


def main(argv) -> None:
    del argv
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # JAX only counts FLOPs here; torch has the GPU
    opts, path = benchmark.options_from_flags()
    validate(opts)
    require_cuda()
    benchmark.report(run(opts), path)


if __name__ == "__main__":
    benchmark.define_flags()
    cli.run(main)
