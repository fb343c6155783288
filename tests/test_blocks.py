"""Residual blocks and whole networks against a numpy forward pass written from the papers' layer
orders, with random weights and BatchNorm statistics (eval mode, so BN is an affine map).

Post-activation (He et al. 2015): conv, BN, ReLU, ..., conv, BN, + shortcut, ReLU; a projection
shortcut is a strided 1x1 convolution and BN. Pre-activation (He et al. 2016): BN, ReLU, conv, ...,
+ shortcut, nothing after the sum; a projection reads the pre-activated input and has no BN.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax.models.blocks import BasicBlock, BottleneckBlock
from resnet_jax.models.layers import BatchNorm
from resnet_jax.models.resnet import ResNet
from resnet_jax.steps import create_train_state, make_train_step

EPS = 1e-5


def np_conv(x, w, stride=1, groups=1):
    """NHWC cross-correlation padded by k // 2 on every side; w: [k, k, C_in / groups, C_out]."""
    k = w.shape[0]
    pad = k // 2
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oh, ow = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    cin, cout = w.shape[2], w.shape[3] // groups
    out = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    for g in range(groups):
        xg, wg = x[..., g * cin:(g + 1) * cin], w[..., g * cout:(g + 1) * cout]
        for i in range(oh):
            for j in range(ow):
                patch = xg[:, i * stride:i * stride + k, j * stride:j * stride + k]
                out[:, i, j, g * cout:(g + 1) * cout] = np.tensordot(patch, wg,
                                                                     ([1, 2, 3], [0, 1, 2]))
    return out


def np_bn(x, params, stats):
    return ((x - stats["mean"]) / np.sqrt(stats["var"] + EPS) * params["scale"]
            + params["bias"])


def relu(x):
    return np.maximum(x, 0.0)


def np_block(block, p, s, x):
    """The block's forward pass in numpy from its attributes, params p and statistics s."""
    if isinstance(block, BottleneckBlock):
        first, middle = (1, block.stride) if block.stride_on_3x3 else (block.stride, 1)
        layers = [(first, 1), (middle, block.groups), (1, 1)]
    else:
        layers = [(block.stride, 1), (1, 1)]
    changes = block.stride != 1 or x.shape[-1] != block.features
    project = block.shortcut == "C" or (block.shortcut == "B" and changes)
    if block.preact:
        h = x if block.skip_preact else relu(np_bn(x, p["bn1"], s["bn1"]))
        for i, (stride, groups) in enumerate(layers, start=1):
            if i > 1:
                h = relu(np_bn(h, p[f"bn{i}"], s[f"bn{i}"]))
            h = np_conv(h, p[f"conv{i}"]["kernel"], stride, groups)
        pre = x if block.skip_preact else relu(np_bn(x, p["bn1"], s["bn1"]))
        shortcut = np_conv(pre, p["shortcut_conv"]["kernel"], block.stride) if project else None
    else:
        h = x
        for i, (stride, groups) in enumerate(layers, start=1):
            h = np_bn(np_conv(h, p[f"conv{i}"]["kernel"], stride, groups), p[f"bn{i}"], s[f"bn{i}"])
            if i < len(layers):
                h = relu(h)
        shortcut = (np_bn(np_conv(x, p["shortcut_conv"]["kernel"], block.stride),
                          p["shortcut_bn"], s["shortcut_bn"]) if project else None)
    if block.shortcut == "none":
        out = h
    elif project:
        out = h + shortcut
    elif changes:  # option A
        sub = x[:, ::block.stride, ::block.stride]
        out = h + np.pad(sub, ((0, 0), (0, 0), (0, 0), (0, block.features - x.shape[-1])))
    else:
        out = h + x
    return out if block.preact else relu(out)


def random_variables(module, x, seed):
    """Variables of `module` shaped as its init on x (traced, not run): random kernels, BN scales
    in [0.5, 1.5], biases and means, and variances in [0.5, 2]."""
    rng = np.random.default_rng(seed)

    def draw(path, v):
        name = path[-1].key
        if name == "scale":
            return rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
        if name == "var":
            return rng.uniform(0.5, 2.0, v.shape).astype(np.float32)
        return (rng.normal(size=v.shape) * (0.3 if name == "kernel" else 0.5)).astype(np.float32)

    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
    return jax.tree_util.tree_map_with_path(draw, shapes)


def eval_norm(**kw):
    return BatchNorm(use_running_average=True, **kw)


BLOCKS = {
    "basic_B_projects": BasicBlock(features=8, stride=2, shortcut="B"),
    "basic_B_identity": BasicBlock(features=4, shortcut="B"),
    "basic_B_widens": BasicBlock(features=8, shortcut="B"),
    "basic_A_pads": BasicBlock(features=8, stride=2, shortcut="A"),
    "basic_A_widens": BasicBlock(features=8, shortcut="A"),
    "basic_C": BasicBlock(features=4, shortcut="C"),
    "basic_plain": BasicBlock(features=8, stride=2, shortcut="none"),
    "basic_preact_B": BasicBlock(features=8, stride=2, shortcut="B", preact=True),
    "basic_preact_identity": BasicBlock(features=4, preact=True),
    "basic_preact_skip": BasicBlock(features=8, stride=2, preact=True, skip_preact=True),
    "basic_preact_A": BasicBlock(features=8, stride=2, shortcut="A", preact=True),
    "bottleneck_v1": BottleneckBlock(features=8, stride=2, width=4, groups=2, stride_on_3x3=False),
    "bottleneck_v15": BottleneckBlock(features=8, stride=2, width=4, groups=2),
    "bottleneck_preact": BottleneckBlock(features=8, stride=2, width=4, groups=2, preact=True),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_forward_matches_numpy(name):
    block = BLOCKS[name].clone(norm=eval_norm)
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 4)).astype(np.float32)
    variables = random_variables(block, x, seed=len(name))
    out = block.apply(variables, x)
    expected = np_block(block, variables["params"], variables.get("batch_stats", {}), x)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block", [BasicBlock(features=8), BottleneckBlock(features=8, width=4),
                                   BasicBlock(features=8, preact=True),
                                   BottleneckBlock(features=8, width=4, preact=True)],
                         ids=["basic", "bottleneck", "basic_preact", "bottleneck_preact"])
def test_zero_init_residual_zeroes_only_the_last_layer_of_the_branch(block):
    """Post-activation: the last BN scale is 0, the others 1; pre-activation (no BN after the last
    convolution): the last convolution's kernel is 0, the others are not."""
    x = np.ones((1, 4, 4, 8), np.float32)
    block = block.clone(zero_init_residual=True, norm=eval_norm)
    params = block.init(jax.random.key(0), x)["params"]
    last = 3 if isinstance(block, BottleneckBlock) else 2
    for i in range(1, last + 1):
        zero = i == last
        if block.preact:
            kernel = np.asarray(params[f"conv{i}"]["kernel"])
            assert np.all(kernel == 0) if zero else np.all(kernel != 0), f"conv{i}"
            if i > 1:
                np.testing.assert_array_equal(params[f"bn{i}"]["scale"], 1.0)
        else:
            np.testing.assert_array_equal(params[f"bn{i}"]["scale"], 0.0 if zero else 1.0)


def np_resnet(model, variables, x):
    """The network in numpy: stem, stages (stride 2 in the first block of every stage but the
    first), final BN-ReLU when pre-activated, global average pooling, dense head."""
    p, s = variables["params"], variables["batch_stats"]
    x = np.asarray(x, np.float64)
    if model.stem == "imagenet":
        x = relu(np_bn(np_conv(x, p["stem_conv"]["kernel"], 2), p["stem_bn"], s["stem_bn"]))
        x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
        oh, ow = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
        x = np.stack([np.stack([x[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max((1, 2))
                                for j in range(ow)], 1) for i in range(oh)], 1)
    else:
        x = np_conv(x, p["stem_conv"]["kernel"])
        if not model.preact:
            x = relu(np_bn(x, p["stem_bn"], s["stem_bn"]))
    block_cls = BottleneckBlock if model.block == "bottleneck" else BasicBlock
    for si, (n, planes) in enumerate(zip(model.stage_sizes, model.stage_planes)):
        for b in range(n):
            extra = {}
            if model.block == "bottleneck":
                extra = dict(width=planes * model.width_per_group // 64 * model.groups,
                             groups=model.groups, stride_on_3x3=model.stride_on_3x3)
            block = block_cls(features=planes * block_cls.expansion,
                              stride=2 if si > 0 and b == 0 else 1, shortcut=model.shortcut,
                              preact=model.preact,
                              skip_preact=model.preact and model.stem == "imagenet" and si + b == 0,
                              **extra)
            name = f"stage{si + 1}_block{b + 1}"
            x = np_block(block, p[name], s.get(name, {}), x)
    if model.preact:
        x = relu(np_bn(x, p["final_bn"], s["final_bn"]))
    return x.mean((1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]


NETWORKS = {
    "imagenet_basic": ResNet(stage_sizes=(1, 2), stage_planes=(4, 8), num_classes=5),
    "imagenet_preact_bottleneck": ResNet(stage_sizes=(2, 1), stage_planes=(2, 4),
                                         block="bottleneck", preact=True, groups=2,
                                         width_per_group=32, num_classes=5),
    "imagenet_v1_wide": ResNet(stage_sizes=(1, 1), stage_planes=(2, 4), block="bottleneck",
                               stride_on_3x3=False, width_per_group=128, num_classes=5),
    "cifar_A": ResNet(stage_sizes=(1, 2, 1), stage_planes=(4, 8, 16), stem="cifar",
                      shortcut="A", num_classes=5),
    "cifar_preact": ResNet(stage_sizes=(1, 1), stage_planes=(4, 8), stem="cifar", preact=True,
                           num_classes=5),
}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_network_forward_matches_numpy(name):
    model = NETWORKS[name]
    size = 14 if model.stem == "imagenet" else 8  # 14: the max-pool sees a 7 x 7 input
    x = np.random.default_rng(2).normal(size=(2, size, size, 3)).astype(np.float32)
    variables = random_variables(model, x, seed=len(name))
    logits = model.apply(variables, x)
    assert logits.dtype == jnp.float32 and logits.shape == (2, 5)
    np.testing.assert_allclose(logits, np_resnet(model, variables, x), rtol=1e-4, atol=1e-4)


def test_unknown_stem_is_rejected():
    with pytest.raises(ValueError, match="stem must be one of"):
        ResNet(stage_sizes=(1,), stage_planes=(4,), stem="tiny").init(
            jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))


def test_network_updates_running_statistics_with_momentum_0_9_by_default():
    """Train mode: the stem's BatchNorm keeps 0.9 * running + 0.1 * batch (biased variance) of the
    stem convolution's output."""
    model = ResNet(stage_sizes=(1,), stage_planes=(4,), stem="cifar", num_classes=5)
    x = np.random.default_rng(3).normal(size=(4, 6, 6, 3)).astype(np.float32)
    variables = random_variables(model, x, seed=5)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    stem = np_conv(x, variables["params"]["stem_conv"]["kernel"])
    old = variables["batch_stats"]["stem_bn"]
    new = updates["batch_stats"]["stem_bn"]
    np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * stem.mean((0, 1, 2)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * stem.var((0, 1, 2)),
                               rtol=1e-5, atol=1e-5)


def test_network_option_keeps_the_unbiased_running_variance():
    """bn_unbiased_running_var=True: the stem's running variance takes the unbiased variance of the
    stem convolution's n = 4 * 6 * 6 values per channel (numpy ddof=1)."""
    model = ResNet(stage_sizes=(1,), stage_planes=(4,), stem="cifar", num_classes=5,
                   bn_unbiased_running_var=True)
    x = np.random.default_rng(3).normal(size=(4, 6, 6, 3)).astype(np.float32)
    variables = random_variables(model, x, seed=5)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    stem = np_conv(x, variables["params"]["stem_conv"]["kernel"]).reshape(-1, 4)
    np.testing.assert_allclose(updates["batch_stats"]["stem_bn"]["var"],
                               0.9 * variables["batch_stats"]["stem_bn"]["var"]
                               + 0.1 * stem.var(0, ddof=1), rtol=1e-5, atol=1e-5)


def test_default_network_options_are_torchvision_resnets():
    """Without options a bottleneck network is a plain ImageNet ResNet: one group of 64 channels
    per group (the 3x3 convolution has `planes` channels in and out), 1000 classes, no zero-init."""
    model = ResNet(stage_sizes=(1,), stage_planes=(64,), block="bottleneck")
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
    assert shapes["params"]["stage1_block1"]["conv2"]["kernel"].shape == (3, 3, 64, 64)
    assert shapes["params"]["stage1_block1"]["conv3"]["kernel"].shape == (1, 1, 64, 256)
    assert shapes["params"]["head"]["kernel"].shape == (256, 1000)
    small = ResNet(stage_sizes=(1,), stage_planes=(4,), stem="cifar")
    params = small.init(jax.random.key(0), np.zeros((1, 4, 4, 3), np.float32))["params"]
    np.testing.assert_array_equal(params["stage1_block1"]["bn2"]["scale"], 1.0)


def test_bottleneck_strides_the_3x3_by_default():
    """The default bottleneck is v1.5 (torchvision): the numpy block with the stride on the 3x3."""
    block = BottleneckBlock(features=8, stride=2, width=4, norm=eval_norm)
    x = np.random.default_rng(4).normal(size=(2, 6, 6, 4)).astype(np.float32)
    variables = random_variables(block, x, seed=6)
    v15 = BottleneckBlock(features=8, stride=2, width=4, stride_on_3x3=True)
    np.testing.assert_allclose(block.apply(variables, x),
                               np_block(v15, variables["params"], variables["batch_stats"], x),
                               rtol=1e-4, atol=1e-4)


def test_block_defaults_preactivate_the_input_and_width_64():
    """A pre-activation block applies its leading BN-ReLU unless told to skip it; a bottleneck's
    width defaults to 64, in one group; the branch does not start at zero."""
    block = BasicBlock(features=4, preact=True, norm=eval_norm)
    x = np.random.default_rng(5).normal(size=(2, 6, 6, 4)).astype(np.float32)
    variables = random_variables(block, x, seed=7)
    reference = BasicBlock(features=4, preact=True, skip_preact=False)
    expected = np_block(reference, variables["params"], variables["batch_stats"], x)
    np.testing.assert_allclose(block.apply(variables, x), expected, rtol=1e-4, atol=1e-4)
    shapes = jax.eval_shape(BottleneckBlock(features=256, norm=eval_norm).init, jax.random.key(0),
                            np.zeros((1, 4, 4, 256), np.float32))
    assert shapes["params"]["conv1"]["kernel"].shape == (1, 1, 256, 64)
    assert shapes["params"]["conv2"]["kernel"].shape == (3, 3, 64, 64)  # one group
    params = BasicBlock(features=4, norm=eval_norm).init(jax.random.key(0), x)["params"]
    np.testing.assert_array_equal(params["bn2"]["scale"], 1.0)  # no zero-init by default


def test_default_network_strides_the_3x3_of_its_bottlenecks():
    """The default network is v1.5: the numpy network with the stride on the 3x3."""
    model = ResNet(stage_sizes=(1, 1), stage_planes=(2, 4), block="bottleneck", num_classes=5)
    x = np.random.default_rng(6).normal(size=(2, 14, 14, 3)).astype(np.float32)
    variables = random_variables(model, x, seed=8)
    expected = np_resnet(model.clone(stride_on_3x3=True), variables, x)
    np.testing.assert_allclose(model.apply(variables, x), expected, rtol=1e-4, atol=1e-4)


def test_remat_network_takes_the_same_train_step_and_rematerialises():
    """remat=True: the same variables, and one SGD step (loss, gradient norm, parameters, running
    statistics) equal to remat=False's within float32 rounding (rtol 1e-5, atol 1e-6); its gradient
    recomputes the blocks (a `remat` primitive), the plain network's none."""
    x = np.random.default_rng(7).normal(size=(4, 8, 8, 3)).astype(np.float32)
    batch = {"image": x, "label": np.array([0, 1, 4, 2], np.int32)}
    tx = optax.sgd(0.1, momentum=0.9)
    results, jaxprs = [], []
    for remat in (False, True):
        model = ResNet(stage_sizes=(1, 1), stage_planes=(4, 8), stem="cifar", num_classes=5,
                       remat=remat)
        state = jax.jit(lambda: create_train_state(model, tx, (8, 8, 3), seed=0))()
        step = make_train_step(model, tx, optax.constant_schedule(0.1))
        results.append(jax.jit(step)(state, batch))
        jaxprs.append(str(jax.make_jaxpr(step)(state, batch)))
    (plain, plain_metrics), (remat, remat_metrics) = results
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    jax.tree.map(close, (plain.params, plain.batch_stats, plain_metrics["loss"],
                         plain_metrics["grad_norm"]),
                 (remat.params, remat.batch_stats, remat_metrics["loss"],
                  remat_metrics["grad_norm"]))
    assert "remat" in jaxprs[1] and "remat" not in jaxprs[0]
