"""Whether a checkpoint fits a target state: the path and shape of every saved array against the
abstract state built from the config."""

from typing import Any, Optional

import jax

from resnet_jax.errors import IncompatibleCheckpointError


def array_shapes(tree: Any) -> dict[str, tuple]:
    """{"params/stage1_block1/conv1/kernel": shape, ...} of a tree of arrays or array metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape)
            for path, leaf in leaves}


def first_mismatch(saved: dict[str, tuple], expected: dict[str, tuple]) -> Optional[str]:
    """Describe the first array (in `expected` order) whose shape differs between the two
    {path: shape} maps, or that only one of them has; None when they agree. Also counts the rest."""

    def shape(shapes, path):
        return f"shape {shapes[path]}" if path in shapes else "absent"

    paths = list(expected) + [path for path in saved if path not in expected]
    problems = [f"{path}: {shape(saved, path)} in the checkpoint, {shape(expected, path)} in the "
                "target" for path in paths if saved.get(path) != expected.get(path)]
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more arrays differ)" if len(problems) > 1 else ""
    return problems[0] + more


def check_compatible(step: int, saved: dict[str, tuple], abstract_state: Any) -> None:
    """Raise IncompatibleCheckpointError naming the first array of checkpoint `step` (its
    {path: shape} map `saved`) whose path or shape differs from `abstract_state`."""
    problem = first_mismatch(saved, array_shapes(abstract_state))
    if problem:
        raise IncompatibleCheckpointError(f"checkpoint step {step} does not fit the state "
                                          f"built from the config: {problem}")
