"""Flax residual networks: blocks, the ResNet module, the registry by name, summaries."""

from resnet_jax.models.blocks import BasicBlock, BottleneckBlock
from resnet_jax.models.registry import OPTIONS, create_model, get_spec, list_models
from resnet_jax.models.resnet import ResNet

__all__ = ["BasicBlock", "BottleneckBlock", "OPTIONS", "ResNet", "create_model", "get_spec",
           "list_models"]
