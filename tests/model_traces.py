"""Abstract traces of models, made once per test process and shared by the test files that need
them (test_models.py, test_configs.py): tracing the deepest nets (CIFAR ResNet-1202,
pre-activation ResNet-1001) takes 5-10 s each on 2 CPU cores."""

import functools

import flax.linen as nn

from resnet_jax.models.summary import count_params, trace_model


@functools.lru_cache(maxsize=None)
def traced(model: nn.Module, image_size: int = 32, channels: int = 3) -> tuple[int, tuple]:
    """(trainable parameter count, head output shape without the batch) of `model` (modules with
    equal fields are one cache entry) on [image_size, image_size, channels] images."""
    variables, _, shapes = trace_model(model, image_size, channels)
    return count_params(variables["params"]), shapes["head"]
