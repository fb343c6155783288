"""The model zoo against the published references (shared/REFERENCE.md) and the paper's definitions."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import create_model, get_spec, list_models
from resnet_jax.models.blocks import BasicBlock, BottleneckBlock
from resnet_jax.models.layers import BatchNorm
from resnet_jax.models.summary import summarize, trace_model
from model_traces import one_block_per_stage, traced
from unoptimised import unoptimised

# torchvision model docs.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808, "wide_resnet50_2": 68_883_240,
    "resnext50_32x4d": 25_028_904,
}
# Paper Table 6 (option A), and option B as published by osmr/imgclsmob.
CIFAR_PARAMS = {20: (269_722, 272_474), 32: (464_154, 466_906), 44: (658_586, 661_338),
                56: (853_018, 855_770), 110: (1_727_962, 1_730_714),
                1202: (19_421_274, 19_424_026)}
# He et al. 2016 round these to 1.7M and 10.2M; osmr/imgclsmob publishes the exact counts.
PREACT_PARAMS = {"cifar_preact_resnet164": 1_703_258, "cifar_preact_resnet1001": 10_327_706}
# torchvision GMACs at 224x224.
TORCHVISION_GMACS = {"resnet18": 1.81, "resnet34": 3.66, "resnet50": 4.09, "resnet101": 7.80,
                     "resnet152": 11.51}
# The shallowest model of each kind of block and stem runs forward and backward numerically, cut to
# one block per stage (its stem, every block kind it has and its head); every other registered
# model differs from one of these only in depth or width, and is traced abstractly (parameters and
# output shape): compiling it takes 10 s to minutes on 2 CPU cores.
NUMERIC = {"cifar_plain20", "cifar_resnet20", "plain18", "resnet18", "resnet50", "preact_resnet18",
           "preact_resnet50", "resnext50_32x4d"}


def n_params(name, **options):
    return traced(create_model(name, **options))[0]


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_torchvision_parameter_counts_are_exact(name):
    assert n_params(name) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("depth", sorted(CIFAR_PARAMS))
def test_cifar_parameter_counts_are_exact_for_options_a_and_b(depth):
    option_a, option_b = CIFAR_PARAMS[depth]
    assert n_params(f"cifar_resnet{depth}") == option_a
    # Option B's projections sit at the two stage transitions whatever the depth: checked up to
    # ResNet-110 (tracing ResNet-1202 a second time, with them, takes about 10 s of CPU).
    if depth <= 110:
        assert n_params(f"cifar_resnet{depth}", shortcut="B") == option_b


@pytest.mark.parametrize("name", sorted(PREACT_PARAMS))
def test_preact_parameter_counts(name):
    assert n_params(name) == PREACT_PARAMS[name]


@pytest.mark.parametrize("name", sorted(TORCHVISION_GMACS))
def test_macs_within_two_percent_of_torchvision(name):
    macs = summarize(name, 224).macs
    assert abs(macs / 1e9 - TORCHVISION_GMACS[name]) / TORCHVISION_GMACS[name] < 0.02


def test_cifar_macs_match_reference_exactly():
    assert summarize("cifar_resnet20", 32).macs == 40_551_040
    assert round(summarize("cifar_resnet110", 32).macs / 1e6, 2) == 252.89


def _initialised(model):
    """model's variables initialised from key 0 on a 32x32 image."""
    return unoptimised(lambda: model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3))))


@pytest.mark.parametrize("name", list_models())
def test_forward_and_backward(name):
    if name not in NUMERIC:  # its blocks and stem are those of a NUMERIC model: shapes suffice
        params, head = traced(create_model(name))
        assert head == (get_spec(name).num_classes,) and params > 0
        return
    model = one_block_per_stage(create_model(name, num_classes=7))
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))

    def forward_and_backward():
        variables = model.init(jax.random.key(0), x, train=False)

        def loss(params):
            logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                    x, train=True, mutable=["batch_stats"])
            return jnp.mean(jax.nn.log_softmax(logits)[:, 0])

        return model.apply(variables, x, train=False), *jax.value_and_grad(loss)(
            variables["params"])

    logits, loss, grads = unoptimised(forward_and_backward)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert np.isfinite(float(loss))
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(norms) > 0


def test_option_a_adds_no_parameters():
    # Option A's shortcuts are parameter-free: the residual net has the plain net's parameters.
    for depth in (20, 56, 110):
        assert n_params(f"cifar_resnet{depth}") == n_params(f"cifar_plain{depth}")
    variables, _, _ = trace_model(create_model("cifar_resnet20"), 32)
    assert not any("shortcut" in str(path) for path, _ in
                   jax.tree_util.tree_flatten_with_path(variables["params"])[0])


def _shortcut_blocks(name, **options):
    variables, _, _ = trace_model(create_model(name, **options), 32)
    blocks = [k for k in variables["params"] if k.startswith("stage")]
    return blocks, [k for k in blocks if "shortcut_conv" in variables["params"][k]]


def test_option_b_projects_only_where_shape_changes_and_c_everywhere():
    blocks, projected = _shortcut_blocks("cifar_resnet20", shortcut="B")
    assert projected == ["stage2_block1", "stage3_block1"]
    blocks, projected = _shortcut_blocks("cifar_resnet20", shortcut="C")
    assert projected == blocks and len(blocks) == 9
    blocks, projected = _shortcut_blocks("resnet50")
    assert projected == ["stage1_block1", "stage2_block1", "stage3_block1", "stage4_block1"]


def _block_output(block, x):
    """The block's output on x with its residual branch silenced (the last BN's scale and bias
    zero)."""
    def run():
        variables = block.init(jax.random.key(0), x)
        params = jax.tree_util.tree_map_with_path(
            lambda p, v: jnp.zeros_like(v) if "bn2" in str(p) else v, variables["params"])
        return block.apply({**variables, "params": params}, x)

    return unoptimised(run)


def test_plain_block_has_no_shortcut_and_residual_block_has_one():
    norm = lambda **kw: BatchNorm(use_running_average=True, **kw)
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 16))
    plain = BasicBlock(features=16, shortcut="none", norm=norm)
    residual = BasicBlock(features=16, shortcut="A", norm=norm)
    # With the branch silenced, a plain block outputs zeros and a residual block relu(x).
    np.testing.assert_array_equal(_block_output(plain, x), 0.0)
    np.testing.assert_allclose(_block_output(residual, x), jax.nn.relu(x))


def test_option_a_subsamples_and_zero_pads():
    norm = lambda **kw: BatchNorm(use_running_average=True, **kw)
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 16))
    block = BasicBlock(features=32, stride=2, shortcut="A", norm=norm)
    out = _block_output(block, x)
    expected = jnp.concatenate([jax.nn.relu(x[:, ::2, ::2]), jnp.zeros((2, 4, 4, 16))], -1)
    np.testing.assert_allclose(out, expected)


@pytest.mark.parametrize("block_cls", [BasicBlock, BottleneckBlock])
def test_preactivation_leaves_the_identity_path_bare(block_cls):
    # A pre-activation block whose branch starts at zero is the identity: no BN or ReLU on the
    # identity path, nothing after the addition (negative inputs survive).
    norm = lambda **kw: BatchNorm(use_running_average=False, **kw)
    x = jax.random.normal(jax.random.key(4), (4, 8, 8, 64))
    pre = block_cls(features=64, preact=True, zero_init_residual=True, norm=norm, shortcut="B")
    post = block_cls(features=64, zero_init_residual=True, norm=norm)
    outputs = unoptimised(lambda: [b.apply(b.init(jax.random.key(0), x), x,
                                            mutable=["batch_stats"])[0] for b in (pre, post)])
    np.testing.assert_array_equal(outputs[0], x)
    np.testing.assert_allclose(outputs[1], jax.nn.relu(x), atol=1e-6)


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_state():
    model = create_model("cifar_resnet20", dtype="bfloat16")
    x = jnp.ones((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
    conv_dtypes = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.Conv):
            conv_dtypes.append(out.dtype)
        return out

    with nn.intercept_methods(record):  # dtypes are known from the trace
        logits, updates = jax.eval_shape(
            lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)
    assert set(conv_dtypes) == {jnp.dtype("bfloat16")}
    assert logits.dtype == jnp.float32
    assert {v.dtype for v in jax.tree.leaves(updates)} == {jnp.dtype("float32")}


def test_v1_strides_the_first_1x1_and_v15_the_3x3():
    def conv_shapes(variant):
        shapes = {}

        def record(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.module.path[:1] == ("stage2_block1",) and isinstance(context.module, nn.Conv):
                shapes[context.module.name] = out.shape[1:3]
            return out

        model = create_model("resnet50", variant=variant)
        with nn.intercept_methods(record):
            jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 64, 64, 3))))
        return shapes

    assert conv_shapes("v1")["conv1"] == (8, 8) and conv_shapes("v1")["conv2"] == (8, 8)
    assert conv_shapes("v1.5")["conv1"] == (16, 16) and conv_shapes("v1.5")["conv2"] == (8, 8)


def test_grouped_batchnorm_normalises_each_group_by_itself():
    x = jax.random.normal(jax.random.key(5), (8, 4, 4, 3)) * jnp.arange(1, 9)[:, None, None, None]
    grouped = BatchNorm(use_running_average=False, group_size=4)
    whole = BatchNorm(use_running_average=False)
    variables = grouped.init(jax.random.key(0), x)
    out, stats = grouped.apply(variables, x, mutable=["batch_stats"])
    halves = [whole.apply(variables, x[i:i + 4], mutable=["batch_stats"]) for i in (0, 4)]
    np.testing.assert_allclose(out, jnp.concatenate([h[0] for h in halves]), rtol=1e-5, atol=1e-5)
    mean_of_halves = (halves[0][1]["batch_stats"]["mean"] + halves[1][1]["batch_stats"]["mean"]) / 2
    np.testing.assert_allclose(stats["batch_stats"]["mean"], mean_of_halves, rtol=1e-6)
    with pytest.raises(ValueError, match="bn_group_size"):
        grouped.apply(variables, x[:6], mutable=["batch_stats"])


def test_he_fan_out_initialisation():
    variables = _initialised(one_block_per_stage(create_model("resnet18")))
    kernel = variables["params"]["stage3_block1"]["conv2"]["kernel"]  # 3x3, 256 -> 256
    assert abs(float(jnp.std(kernel)) / np.sqrt(2 / (3 * 3 * 256)) - 1) < 0.05


def test_zero_init_residual_zeroes_the_last_bn_scale():
    variables = _initialised(one_block_per_stage(create_model("resnet18", zero_init_residual=True)))
    assert float(jnp.abs(variables["params"]["stage1_block1"]["bn2"]["scale"]).max()) == 0.0
    assert float(variables["params"]["stage1_block1"]["bn1"]["scale"].min()) == 1.0


def test_registry_errors_name_what_exists():
    with pytest.raises(ValueError, match="resnet50.*") as err:
        create_model("resnet51")
    assert "cifar_resnet56" in str(err.value)
    with pytest.raises(ValueError, match="unknown option.*widht.*allowed: num_classes"):
        create_model("resnet18", widht=2)
    with pytest.raises(ValueError, match="shortcut='D'.*expected one of"):
        create_model("resnet18", shortcut="D")
    with pytest.raises(ValueError, match="variant"):
        create_model("resnet18", variant="v1")  # basic blocks have no v1/v1.5
    with pytest.raises(ValueError, match="zero_init_residual=True is not allowed"):
        create_model("cifar_plain20", zero_init_residual=True)
    with pytest.raises(ValueError, match=r"remat=1 is not allowed; expected bool"):
        create_model("resnet18", remat=1)
    with pytest.raises(ValueError, match=r"bn_unbiased_running_var='yes' is not allowed"):
        create_model("resnet18", bn_unbiased_running_var="yes")


def test_registry_names_are_consistent():
    names = list_models()
    assert {"resnet18", "resnet200", "plain34", "cifar_resnet1202", "cifar_plain110",
            "cifar_preact_resnet164", "cifar_preact_resnet1001", "wide_resnet50_2",
            "resnext50_32x4d", "preact_resnet50"} <= set(names)
    for name in names:
        spec = get_spec(name)
        assert name.startswith("cifar_") == (spec.stem == "cifar")
        assert ("plain" in name) == (spec.shortcut == "none")
        assert ("preact" in name) == spec.preact


def test_summary_command_prints_stages():
    out = subprocess.run([sys.executable, "-m", "resnet_jax.models.summary", "--model", "resnet50"],
                         capture_output=True, text=True, check=True).stdout
    assert "25,557,032" in out and "4,089,184,256" in out and "(7, 7, 2048)" in out
