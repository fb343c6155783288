"""torchvision weight import: logits match an independent NCHW reference; errors name the keys.

The state dicts are generated here in torchvision's naming and layout from the architectures below,
written down from torchvision's ResNet definitions, not from our registry.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from resnet_jax.convert import (TORCHVISION_MODELS, architecture, flax_to_torchvision,
                                import_torchvision, load_state_dict, torchvision_to_flax)
from resnet_jax.models import create_model
from unoptimised import unoptimised

# torchvision name -> (block, blocks per layer, groups, width_per_group)
TORCHVISION_ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2), 1, 64),
    "resnet34": ("basic", (3, 4, 6, 3), 1, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 1, 64),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 1, 64),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 1, 128),
    "wide_resnet101_2": ("bottleneck", (3, 4, 23, 3), 1, 128),
    "resnext50_32x4d": ("bottleneck", (3, 4, 6, 3), 32, 4),
    "resnext101_32x8d": ("bottleneck", (3, 4, 23, 3), 32, 8),
}
BN_EPS = 1e-5


def torchvision_shapes(name: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of torchvision's `name` with its shape (OIHW convolutions)."""
    block, layers, groups, width_per_group = TORCHVISION_ARCHS[name]
    expansion = 1 if block == "basic" else 4
    shapes = {}

    def conv(prefix, out_ch, in_ch, k):
        shapes[f"{prefix}.weight"] = (out_ch, in_ch, k, k)

    def bn(prefix, ch):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{leaf}"] = (ch,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for s, (blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f"layer{s}.{b}"
            stride = 2 if s > 1 and b == 0 else 1
            if block == "basic":
                conv(f"{p}.conv1", planes, inplanes, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            else:
                width = int(planes * width_per_group / 64) * groups
                conv(f"{p}.conv1", width, inplanes, 1)
                bn(f"{p}.bn1", width)
                conv(f"{p}.conv2", width, width // groups, 3)
                bn(f"{p}.bn2", width)
                conv(f"{p}.conv3", planes * expansion, width, 1)
                bn(f"{p}.bn3", planes * expansion)
            if stride != 1 or inplanes != planes * expansion:
                conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"] = (num_classes, inplanes)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def random_state_dict(name: str, num_classes: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """A random torchvision state dict of `name`: float32, running_var > 0, int64 counters."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in torchvision_shapes(name, num_classes).items():
        leaf = key.rsplit(".", 1)[1]
        if leaf == "num_batches_tracked":
            value = np.array(rng.integers(0, 10_000), np.int64)
        elif leaf == "running_var":
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "weight" and len(shape) == 1:
            value = rng.uniform(0.5, 1.0, shape)
        elif leaf == "weight":
            value = rng.normal(0.0, 1.0, shape) / np.sqrt(np.prod(shape[1:]))
        else:
            value = rng.normal(0.0, 0.1, shape)
        out[key] = value.astype(value.dtype if leaf == "num_batches_tracked" else np.float32)
    return out


def reference_logits(name: str, sd: dict[str, np.ndarray], x: jnp.ndarray) -> jnp.ndarray:
    """torchvision's eval-mode forward pass, NCHW/OIHW, straight from the state dict."""
    block, layers, groups, _ = TORCHVISION_ARCHS[name]

    def conv(h, key, stride, pad, group_count=1):
        return jax.lax.conv_general_dilated(
            h, sd[f"{key}.weight"], (stride, stride), ((pad, pad), (pad, pad)),
            dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=group_count,
            precision=jax.lax.Precision.HIGHEST)

    def bn(h, key):
        stat = lambda leaf: sd[f"{key}.{leaf}"].reshape(1, -1, 1, 1)
        return ((h - stat("running_mean")) / jnp.sqrt(stat("running_var") + BN_EPS)
                * stat("weight") + stat("bias"))

    relu = jax.nn.relu
    h = relu(bn(conv(x, "conv1", 2, 3), "bn1"))
    h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2),
                              ((0, 0), (0, 0), (1, 1), (1, 1)))
    for s, blocks in enumerate(layers, start=1):
        for b in range(blocks):
            p = f"layer{s}.{b}"
            stride = 2 if s > 1 and b == 0 else 1
            if block == "basic":
                out = relu(bn(conv(h, f"{p}.conv1", stride, 1), f"{p}.bn1"))
                out = bn(conv(out, f"{p}.conv2", 1, 1), f"{p}.bn2")
            else:
                out = relu(bn(conv(h, f"{p}.conv1", 1, 0), f"{p}.bn1"))
                out = relu(bn(conv(out, f"{p}.conv2", stride, 1, groups), f"{p}.bn2"))
                out = bn(conv(out, f"{p}.conv3", 1, 0), f"{p}.bn3")
            if f"{p}.downsample.0.weight" in sd:
                identity = bn(conv(h, f"{p}.downsample.0", stride, 0), f"{p}.downsample.1")
            else:
                identity = h
            h = relu(out + identity)
    h = jnp.mean(h, axis=(2, 3))
    return jnp.dot(h, sd["fc.weight"].T, precision=jax.lax.Precision.HIGHEST) + sd["fc.bias"]


@pytest.fixture(scope="module")
def resnet18_sd():
    return random_state_dict("resnet18")


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_imported_logits_match_reference(name, tmp_path):
    sd = random_state_dict(name)
    path = tmp_path / f"{name}.safetensors"
    save_file(sd, str(path))
    model, variables = import_torchvision(name, path)
    x = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        ours = unoptimised(lambda v, img: model.apply(v, img, train=False), variables,
                           x.transpose(0, 2, 3, 1))
        ref = unoptimised(lambda weights, img: reference_logits(name, weights, img), sd, x)
    assert ours.shape == (2, 10) and ours.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_every_torchvision_model_maps_one_to_one(name):
    shapes = torchvision_shapes(name, num_classes=1000)
    sd = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
    model, variables = import_torchvision(name, sd)
    assert model.num_classes == 1000
    leaves = jax.tree.leaves(variables)
    assert len(leaves) == sum(not k.endswith("num_batches_tracked") for k in shapes)
    assert all(leaf.dtype == np.float32 for leaf in leaves)
    assert architecture(sd) == name


def test_architecture_of_weights_that_fit_no_model():
    sd = {k: np.zeros(s, np.float32) for k, s in torchvision_shapes("resnet18", 10).items()}
    sd["layer1.0.conv2.weight"] = np.zeros((64, 32, 3, 3), np.float32)  # 2 groups: not a model here
    with pytest.raises(ValueError, match=r"no torchvision model .* \(blocks per stage \(2, 2, 2, 2\)"):
        architecture(sd)
    del sd["fc.weight"]
    with pytest.raises(ValueError, match="no classifier"):
        architecture(sd)


def test_round_trip_is_bitwise(tmp_path):
    sd = random_state_dict("resnext50_32x4d", num_classes=7)
    save_file(sd, str(tmp_path / "in.safetensors"))
    _, variables = import_torchvision("resnext50_32x4d", tmp_path / "in.safetensors")
    save_file(flax_to_torchvision(variables), str(tmp_path / "out.safetensors"))
    back = load_state_dict(tmp_path / "out.safetensors")
    assert back.keys() == sd.keys()
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            assert back[key].dtype == np.int64 and back[key].shape == ()
        else:
            assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key


def test_wrong_architecture_names_keys_and_shapes():
    template = jax.eval_shape(lambda: create_model("resnet18").init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    with pytest.raises(ValueError) as err:
        torchvision_to_flax(random_state_dict("resnet50", num_classes=1000), template)
    message = str(err.value)
    assert "layer1.0.conv1.weight: expected (64, 64, 3, 3)" in message
    assert "found (64, 64, 1, 1)" in message
    assert "unexpected" in message and "layer1.0.conv3.weight" in message


def test_missing_unexpected_and_misshapen_keys(resnet18_sd):
    sd = dict(resnet18_sd)
    del sd["layer2.0.downsample.1.running_var"]
    sd["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    sd["layer3.1.conv2.weight"] = np.zeros((256, 256, 1, 1), np.float32)
    with pytest.raises(ValueError) as err:
        import_torchvision("resnet18", sd)
    message = str(err.value)
    assert "1 missing: layer2.0.downsample.1.running_var" in message
    assert "1 unexpected: layer5.0.conv1.weight" in message
    assert "layer3.1.conv2.weight: expected (256, 256, 3, 3)" in message
    assert "found (256, 256, 1, 1)" in message


def test_num_classes_mismatch_is_a_shape_error(resnet18_sd):
    with pytest.raises(ValueError, match=r"fc.weight: expected \(5, 512\)"):
        import_torchvision("resnet18", resnet18_sd, num_classes=5)


def test_refuses_options_and_models_torchvision_lacks(resnet18_sd):
    with pytest.raises(ValueError, match="variant='v1.5'"):
        import_torchvision("resnet50", {}, variant="v1")
    with pytest.raises(ValueError, match="no torchvision counterpart"):
        import_torchvision("cifar_resnet20", resnet18_sd)


def test_pth_without_torch_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    path = tmp_path / "resnet18.pth"
    path.write_bytes(b"")
    with pytest.raises(ImportError, match="needs PyTorch.*safetensors"):
        load_state_dict(path)


def test_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match=r"\.safetensors, \.pth, \.pt"):
        load_state_dict(tmp_path / "resnet18.npz")


def test_matches_real_torchvision():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.1, 0.1)
    model, variables = import_torchvision(
        "resnet18", {k: v.numpy() for k, v in net.state_dict().items()})
    x = np.random.default_rng(2).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    with jax.default_matmul_precision("highest"):
        ours = model.apply(variables, x.transpose(0, 2, 3, 1), train=False)
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=0, atol=1e-4)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in flax_to_torchvision(variables).items()})


def test_import_and_export_copy_instead_of_aliasing(resnet18_sd):
    sd = {key: value.copy() for key, value in resnet18_sd.items()}
    _, variables = import_torchvision("resnet18", sd)
    imported = traverse_util.flatten_dict(variables)
    for path, leaf in imported.items():
        for key, value in sd.items():
            assert not np.shares_memory(leaf, value), ("/".join(path), key)
    before = {path: leaf.copy() for path, leaf in imported.items()}
    for value in sd.values():
        value[...] = 7
    for path, leaf in imported.items():
        np.testing.assert_array_equal(leaf, before[path], err_msg="/".join(path))
    exported = flax_to_torchvision(variables)
    for key, value in exported.items():
        assert not any(np.shares_memory(value, leaf) for leaf in imported.values()), key
