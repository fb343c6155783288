"""Import torchvision ResNet / Wide-ResNet / ResNeXt weights into the Flax models, and export them back.

A torchvision state dict maps names such as "layer1.0.conv1.weight" to arrays in PyTorch layout;
the Flax variables are {"params": ..., "batch_stats": ...} trees built by `create_model`:

    torchvision                           Flax
    conv1.weight [O, I, kh, kw]           params/stem_conv/kernel [kh, kw, I, O]
    bn1.{weight, bias}                    params/stem_bn/{scale, bias}
    bn1.{running_mean, running_var}       batch_stats/stem_bn/{mean, var}
    layer{s}.{b}.conv{i}, .bn{i}          stage{s}_block{b+1}/conv{i}, bn{i}
    layer{s}.{b}.downsample.{0, 1}        stage{s}_block{b+1}/shortcut_conv, shortcut_bn
    fc.weight [out, in], fc.bias [out]    params/head/kernel [in, out], params/head/bias [out]

Grouped convolutions keep torchvision's per-group input channels: [O, I/groups, kh, kw] becomes
[kh, kw, I/groups, O]. BatchNorm `num_batches_tracked` counters are ignored on import.

    model, variables = import_torchvision("resnet50", "resnet50.safetensors")
    logits = model.apply(variables, images_nhwc, train=False)
"""

import os
import re
from typing import Any, Mapping

import jax
import numpy as np
import safetensors.numpy
from flax import traverse_util

from resnet_jax.models import create_model, get_spec

# Registered names whose architecture is exactly torchvision's model of the same name.
TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                      "wide_resnet50_2", "wide_resnet101_2", "resnext50_32x4d", "resnext101_32x8d")
# Model options that would change the forward pass away from torchvision's, with torchvision's value.
TORCHVISION_OPTIONS = {"variant": "v1.5", "shortcut": "B", "bn_epsilon": 1e-5}
IGNORED_SUFFIX = ".num_batches_tracked"
EXTENSIONS = (".safetensors", ".pth", ".pt")

_LEAF_NAMES = {("params", "kernel"): "weight", ("params", "bias"): "bias",
               ("params", "scale"): "weight", ("batch_stats", "mean"): "running_mean",
               ("batch_stats", "var"): "running_var"}
_SHORTCUT_NAMES = {"shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"}
_TOP_NAMES = {"stem_conv": "conv1", "stem_bn": "bn1", "head": "fc"}
# Flax layout = torch layout transposed by these axes, keyed by the number of dimensions of a kernel.
_TO_FLAX_AXES = {4: (2, 3, 1, 0), 2: (1, 0)}
_TO_TORCH_AXES = {4: (3, 2, 0, 1), 2: (1, 0)}
_MAX_LISTED = 10


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a torchvision state dict from `.safetensors` (numpy only) or `.pth`/`.pt` (needs torch).

    Returns name -> numpy array in PyTorch layout; floating tensors of a `.pth` file become float32.
    """
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".safetensors":
        return safetensors.numpy.load_file(path)
    if ext in (".pth", ".pt"):
        try:
            import torch
        except ImportError as err:
            raise ImportError(f"reading {os.fspath(path)!r} needs PyTorch, which is not installed; "
                              "install torch, or convert the file to .safetensors where torch is "
                              "available (safetensors.torch.save_file) and load that") from err
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise ValueError(f"{os.fspath(path)!r} holds a {type(state).__name__}, not a state dict")
        out = {}
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{os.fspath(path)!r} is not a flat state dict of tensors: "
                                 f"{key!r} holds a {type(value).__name__}")
            value = value.detach()
            out[key] = (value.float() if value.is_floating_point() else value).numpy()
        return out
    raise ValueError(f"cannot read weights from {os.fspath(path)!r}: the extension must be one of "
                     f"{', '.join(EXTENSIONS)}")


def torch_name(path: tuple[str, ...]) -> str:
    """The torchvision state-dict key of the Flax variable at `path` (collection, modules..., leaf).

    ("params", "stage2_block1", "shortcut_bn", "scale") -> "layer2.0.downsample.1.weight".
    Raises ValueError for a variable torchvision's ResNet does not have.
    """
    collection, *modules, leaf = path
    leaf_name = _LEAF_NAMES.get((collection, leaf))
    if leaf_name is not None and len(modules) == 1 and modules[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[modules[0]]}.{leaf_name}"
    if leaf_name is not None and len(modules) == 2:
        block = re.fullmatch(r"stage(\d+)_block(\d+)", modules[0])
        layer = _SHORTCUT_NAMES.get(modules[1], modules[1])
        if block and re.fullmatch(r"conv\d+|bn\d+|downsample\.[01]", layer):
            return f"layer{block[1]}.{int(block[2]) - 1}.{layer}.{leaf_name}"
    raise ValueError(f"variable {'/'.join(path)} has no torchvision counterpart")


def _torch_shape(flax_shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    if leaf == "kernel":
        return tuple(flax_shape[a] for a in _TO_TORCH_AXES[len(flax_shape)])
    return tuple(flax_shape)


def _listed(items: list[str]) -> str:
    more = len(items) - _MAX_LISTED
    return "; ".join(items[:_MAX_LISTED]) + (f"; ... and {more} more" if more > 0 else "")


def flax_layout_shapes(state_dict: Mapping[str, Any], variable_paths) -> dict[str, tuple]:
    """{"params/stem_conv/kernel": shape in Flax layout, ...}: the shape of every array of
    `state_dict`, keyed by the Flax variable path (among `variable_paths`, tuples as
    `traverse_util.flatten_dict` gives) its name maps to, or by its own name when none does
    (`*.num_batches_tracked` left out). Compare with `checkpoint.first_mismatch`."""
    shapes, used = {}, set()
    for path in variable_paths:
        try:
            key = torch_name(path)
        except ValueError:
            continue
        if key in state_dict:
            used.add(key)
            shape = tuple(np.shape(state_dict[key]))
            if path[-1] == "kernel" and len(shape) in _TO_FLAX_AXES:
                shape = tuple(shape[a] for a in _TO_FLAX_AXES[len(shape)])
            shapes["/".join(path)] = shape
    for key, value in state_dict.items():
        if key not in used and not key.endswith(IGNORED_SUFFIX):
            shapes[key] = tuple(np.shape(value))
    return shapes


def torchvision_to_flax(state_dict: Mapping[str, Any], variables_template: Mapping[str, Any]
                        ) -> dict[str, dict]:
    """Fill the variable tree of `variables_template` from a torchvision `state_dict`.

    state_dict: name -> array in PyTorch layout (numpy or anything `np.asarray` accepts).
    variables_template: {"params", "batch_stats"} tree of the target model; only leaf shapes are read,
      so the abstract tree `jax.eval_shape` gives for `model.init` is enough.
    Returns {"params": ..., "batch_stats": ...} with float32 numpy leaves in Flax layout, each a new
    array: none shares memory with `state_dict`, so changing either later leaves the other as it was.
    Raises ValueError listing every template variable without a matching key, every state-dict key
    left unused (other than `*.num_batches_tracked`), and every shape mismatch (in PyTorch layout).
    """
    flat = traverse_util.flatten_dict(variables_template)
    missing, mismatched, out, used = [], [], {}, set()
    for path, leaf in flat.items():
        try:
            key = torch_name(path)
        except ValueError as err:
            missing.append(str(err))
            continue
        if key not in state_dict:
            missing.append(f"{key} (for {'/'.join(path)})")
            continue
        used.add(key)
        value = np.asarray(state_dict[key])
        expected = _torch_shape(leaf.shape, path[-1])
        if value.shape != expected:
            mismatched.append(f"{key}: expected {expected} (for {'/'.join(path)}), found {value.shape}")
            continue
        if path[-1] == "kernel":
            value = value.transpose(_TO_FLAX_AXES[value.ndim])
        out[path] = np.array(value, dtype=np.float32, order="C")
    unused = [k for k in state_dict if k not in used and not k.endswith(IGNORED_SUFFIX)]
    problems = [f"\n  {len(items)} {what}: {_listed(sorted(items))}" for what, items in
                (("missing", missing), ("unexpected", unused), ("with the wrong shape", mismatched))
                if items]
    if problems:
        raise ValueError("the state dict does not fit the model (is it another architecture?):"
                         + "".join(problems))
    return traverse_util.unflatten_dict(out)


def flax_to_torchvision(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The torchvision state dict of Flax `variables` ({"params", "batch_stats"}): the inverse import.

    Arrays are new contiguous float32 numpy arrays in PyTorch layout (none shares memory with
    `variables`); every BatchNorm also gets a `num_batches_tracked` int64 scalar 0, so torch's
    strict `load_state_dict` accepts the result.
    """
    out = {}
    for path, leaf in traverse_util.flatten_dict(variables).items():
        key = torch_name(path)
        value = np.asarray(leaf, dtype=np.float32)
        if path[-1] == "kernel":
            value = value.transpose(_TO_TORCH_AXES[value.ndim])
        out[key] = np.array(value, order="C")
        if path[-1] == "mean":
            out[key.removesuffix("running_mean") + IGNORED_SUFFIX[1:]] = np.zeros((), np.int64)
    return out


def import_torchvision(name: str, path_or_state_dict: str | os.PathLike | Mapping[str, Any],
                       **model_options: Any):
    """Build `create_model(name, **model_options)` and load torchvision weights into it.

    path_or_state_dict: a file `load_state_dict` reads, or a state dict already in memory.
    num_classes defaults to the rows of `fc.weight`; options that would change torchvision's forward
    pass (TORCHVISION_OPTIONS) are refused. Returns (model, variables) with float32 numpy leaves.
    """
    if name not in TORCHVISION_MODELS:
        raise ValueError(f"{name!r} has no torchvision counterpart; use one of "
                         f"{', '.join(TORCHVISION_MODELS)}")
    for option, value in TORCHVISION_OPTIONS.items():
        if model_options.get(option, value) != value:
            raise ValueError(f"torchvision weights need {option}={value!r}, "
                             f"got {model_options[option]!r}")
    state_dict = (path_or_state_dict if isinstance(path_or_state_dict, Mapping)
                  else load_state_dict(path_or_state_dict))
    classes = num_classes(state_dict)
    if classes is not None:
        model_options.setdefault("num_classes", classes)
    model, template = _abstract_variables(name, **model_options)
    return model, torchvision_to_flax(state_dict, template)


def num_classes(state_dict: Mapping[str, Any]) -> int | None:
    """The classifier's class count (the rows of `fc.weight`); None when there is no classifier."""
    weight = state_dict.get("fc.weight")
    return None if weight is None else int(np.shape(weight)[0])


def architecture(state_dict: Mapping[str, Any]) -> str:
    """The name in TORCHVISION_MODELS whose every array the state dict holds with the right shape
    and nothing else (torchvision's options, any class count). The candidates are narrowed by the
    blocks per stage, counted from the `layer<s>.<b>.` names; each left is traced abstractly (no
    arrays are made). ValueError when none fits."""
    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        match = re.match(r"layer(\d+)\.(\d+)\.", key)
        if match:
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
    stage_sizes = tuple(len(blocks[s]) for s in sorted(blocks))
    shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items()
              if not k.endswith(IGNORED_SUFFIX)}
    classes = num_classes(state_dict)
    if classes is None:
        raise ValueError("the state dict has no classifier (fc.weight): is it a torchvision ResNet?")
    for name in TORCHVISION_MODELS:
        if get_spec(name).stage_sizes != stage_sizes:
            continue
        _, template = _abstract_variables(name, num_classes=classes)
        expected = {torch_name(path): _torch_shape(leaf.shape, path[-1])
                    for path, leaf in traverse_util.flatten_dict(template).items()}
        if expected == shapes:
            return name
    raise ValueError(f"no torchvision model of {', '.join(TORCHVISION_MODELS)} has exactly these "
                     f"arrays (blocks per stage {stage_sizes or 'none'})")


def _abstract_variables(name: str, **model_options: Any):
    """(create_model(name, **model_options), its {"params", "batch_stats"} as ShapeDtypeStructs)."""
    model = create_model(name, **model_options)
    image = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
    return model, jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), image)
