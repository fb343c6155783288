"""A sweep's workdirs on disk: where each (config, seed) run lives, and finding the runs again.

Layout (local or gs://), as the sweep writes it:

    <workdir_root>/<name>/seed<s>/   one run per seed (sweep --seeds)
    <workdir_root>/<name>/           one run, the config's own seed (sweep without --seeds)

with <name> the config spec's name (sweep.run_name, e.g. "degradation-resnet20"). A folder is a run
when it holds the config.json that train.py writes at its start. The table and the plot read
through these functions, so both accept either layout. No JAX here: the sweep imports this module.
"""

import re

from etils import epath

from resnet_jax import storage

CONFIG_FILE = "config.json"
SEED_FOLDER = re.compile(r"seed(\d+)")


def seed_workdir(workdir_root: storage.PathLike, name: str, seed: int) -> epath.Path:
    """The workdir of config `name` at `seed`: <workdir_root>/<name>/seed<seed>."""
    return storage.path(workdir_root) / name / f"seed{seed}"


def is_run(folder: epath.Path) -> bool:
    """True when `folder` is a run's workdir (train.py has written its config.json)."""
    return (folder / CONFIG_FILE).exists()


def config_runs(folder: storage.PathLike) -> list[epath.Path]:
    """The runs of one config: `folder` itself if it is a run, else its seed<s> subfolders that are
    runs, in seed order; [] if neither."""
    folder = storage.path(folder)
    if is_run(folder):
        return [folder]
    if not folder.is_dir():
        return []
    seeded = [(int(m.group(1)), child) for child in folder.iterdir()
              if (m := SEED_FOLDER.fullmatch(child.name)) and is_run(child)]
    return [child for _, child in sorted(seeded)]


def sweep_configs(workdir_root: storage.PathLike) -> dict[str, list[epath.Path]]:
    """{config name: its runs (config_runs)} for every folder directly under `workdir_root` that
    holds runs, sorted by name; {} if there are none (or the root does not exist). A root that is
    itself one config's folder (or one run) gives that config alone, not one config per seed."""
    root = storage.path(workdir_root)
    if own := config_runs(root):
        return {root.name: own}
    if not root.is_dir():
        return {}
    found = {child.name: config_runs(child) for child in root.iterdir() if child.is_dir()}
    return {name: found[name] for name in sorted(found) if found[name]}
