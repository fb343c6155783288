"""Abstract traces of models, made once per test session and shared by the test files and worker
processes that need them (test_models.py, test_configs.py): tracing the deepest nets (CIFAR
ResNet-1202, pre-activation ResNet-1001) takes 5-6 s each on 2 CPU cores, and several tests in
either worker ask for the same one."""

import functools
import hashlib
import json

import flax.linen as nn

from resnet_jax.models.summary import count_params, trace_model
from session import once_per_session


def one_block_per_stage(model: nn.Module) -> nn.Module:
    """`model` with the same stem, blocks and head, one block per stage."""
    return model.clone(stage_sizes=(1,) * len(model.stage_sizes))


@functools.lru_cache(maxsize=None)
def traced(model: nn.Module, image_size: int = 32, channels: int = 3) -> tuple[int, tuple]:
    """(trainable parameter count, head output shape without the batch) of `model` on
    [image_size, image_size, channels] images. Modules whose repr (every field) is equal share one
    entry, in this process and on disk for the session."""

    def trace(folder):
        variables, _, shapes = trace_model(model, image_size, channels)
        folder.mkdir(parents=True)
        (folder / "trace.json").write_text(json.dumps(
            [count_params(variables["params"]), list(shapes["head"])]))

    key = hashlib.sha256(repr((model, image_size, channels)).encode()).hexdigest()[:20]
    params, head = json.loads((once_per_session(f"trace-{key}", trace) / "trace.json").read_text())
    return params, tuple(head)
