"""cosmic-ray's test command: run the fast tests that cover the module being mutated.

cosmic-ray mutates one file of the working tree in place; `git diff` names it. Exit status 0 means
the mutant survived. Tests that do not exist yet are left out, so the same map serves a run before
new tests are written.
"""

import os
import subprocess
import sys

# Fast tests per module of the semantic core (no training runs, no subprocesses), quickest first:
# with -x a killed mutant costs the tests up to the first failure, a survivor all of them.
LAYER_TESTS = [
    "tests/test_layers.py",
    "tests/test_models.py::test_option_a_adds_no_parameters",
    "tests/test_models.py::test_grouped_batchnorm_normalises_each_group_by_itself",
    "tests/test_models.py::test_option_a_subsamples_and_zero_pads",
    "tests/test_models.py::test_plain_block_has_no_shortcut_and_residual_block_has_one",
    "tests/test_models.py::test_preactivation_leaves_the_identity_path_bare",
    "tests/test_models.py::test_he_fan_out_initialisation",
]
MODEL_TESTS = LAYER_TESTS + [
    "tests/test_models.py::test_option_b_projects_only_where_shape_changes_and_c_everywhere",
    "tests/test_models.py::test_v1_strides_the_first_1x1_and_v15_the_3x3",
    "tests/test_models.py::test_zero_init_residual_zeroes_the_last_bn_scale",
    "tests/test_models.py::test_cifar_parameter_counts_are_exact_for_options_a_and_b[20]",
    "tests/test_models.py::test_preact_parameter_counts[cifar_preact_resnet164]",
    "tests/test_models.py::test_torchvision_parameter_counts_are_exact[resnet50]",
    "tests/test_models.py::test_cifar_macs_match_reference_exactly",
    "tests/test_models.py::test_bfloat16_computes_in_bfloat16_and_keeps_float32_state",
]
PREPROCESSING_TESTS = [
    "tests/test_preprocessing.py",
    "tests/test_data_files.py::test_eval_views",
    "tests/test_data_files.py::test_torchvision_eval_matches_pil_resize_and_center_crop",
    "tests/test_data_files.py::test_train_augmentations_flip_about_half_the_time",
]
TESTS = {
    "resnet_jax/steps.py": [
        "tests/test_steps.py",
        "tests/test_eval.py::test_eval_step_averages_softmax_over_views",
    ],
    "resnet_jax/optim.py": ["tests/test_optim.py"],
    "resnet_jax/models/layers.py": LAYER_TESTS,
    "resnet_jax/models/blocks.py": ["tests/test_blocks.py"] + MODEL_TESTS,
    "resnet_jax/models/resnet.py": ["tests/test_blocks.py"] + MODEL_TESTS,
    "resnet_jax/data/preprocessing.py": PREPROCESSING_TESTS,
    "resnet_jax/data/eval_images.py": PREPROCESSING_TESTS,
}


def mutated_modules() -> list[str]:
    out = subprocess.run(["git", "diff", "--name-only", "--", *TESTS], capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def main() -> int:
    modules = mutated_modules()
    if len(modules) != 1:
        print(f"expected one mutated module of {sorted(TESTS)}, found {modules}", file=sys.stderr)
        return 2
    tests = [t for t in TESTS[modules[0]] if os.path.exists(t.split("::")[0])]
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    return subprocess.run(command, env=dict(os.environ, JAX_PLATFORMS="cpu")).returncode


if __name__ == "__main__":
    sys.exit(main())
