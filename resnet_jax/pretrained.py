"""A new run started from pretrained weights (config.init_from): fine-tuning and linear probes.

A source is a workdir of ours (its newest verified checkpoint), a step folder
`<workdir>/checkpoints/<step>`, or a torchvision state dict (`.safetensors`; `.pth`/`.pt` with
PyTorch installed), local or gs://.

- `open_source(config)` finds the source and verifies a checkpoint against its integrity record,
  refusing a damaged or unverified one as eval.py does (one-line ConfigError).
- `with_source_preprocessing(config, source)` fills what the config leaves to the source:
  data.normalization (None: the source's; torchvision weights: "torchvision"; no source:
  "per_channel") and, for torchvision weights, data.resize_size (torchvision's eval crop: the
  shorter side resized to image_size * 256 / 224, then the centre crop). The run stores the result;
  `with_run_preprocessing` reads it back when the run resumes from its own checkpoint.
- `torchvision_fields(state_dict, given)`: what torchvision weights bring to an evaluation
  (eval.py --torchvision_weights): their architecture and, with 1000 classes, ImageNet at 224.
- `Source.load(experiment, init_head)` reads the parameters and BatchNorm statistics, checks every
  array against the model the config builds (the first that differs, with both shapes, is a
  one-line ConfigError) before any compute, and keeps or drops the classifier ("head"): "auto"
  keeps it when the class counts match. `Loaded.into(state)` puts them into a fresh train state;
  the step and optimizer state stay fresh.
"""

import copy
import dataclasses
import functools
import os
import tempfile
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from resnet_jax import convert, parallel, storage
from resnet_jax.checkpoint import Checkpointer, first_mismatch
from resnet_jax.checkpoint.compatibility import array_shapes
from resnet_jax.errors import ConfigError, DamagedCheckpointError, UnverifiedCheckpointError
from resnet_jax.optim import CLASSIFIER
from resnet_jax.steps import TrainState, has_ema, with_ema

COLLECTIONS = ("params", "batch_stats")  # what a source gives; the rest of the state starts fresh
HEAD = f"params/{CLASSIFIER}/"
DEFAULT_NORMALIZATION = "per_channel"
TORCHVISION_NORMALIZATION = "torchvision"
TORCHVISION_CROP = 224  # torchvision's eval: resize the shorter side to 256, crop 224
TORCHVISION_CROP_RATIO = 256 / TORCHVISION_CROP
IMAGENET_CLASSES = 1000
PREPROCESSING_FIELDS = ("normalization", "resize_size")  # config.data fields a source may fill


@dataclasses.dataclass
class Loaded:
    """Arrays to put into a fresh train state: {"params/stem_conv/kernel": array, ...} (the
    classifier's absent when it is re-initialised), and the header's line saying what was done."""

    arrays: dict[str, Any]
    note: str

    def into(self, state: TrainState) -> TrainState:
        """`state` with its parameters and BatchNorm statistics replaced by the loaded ones, each
        placed with the sharding and dtype of the leaf it replaces; an EMA of the weights
        (config.ema_decay) restarts at the loaded weights."""

        def replace(collection, tree):
            def leaf(path, old):
                key = f"{collection}/{jax.tree_util.keystr(path, simple=True, separator='/')}"
                value = self.arrays.get(key)
                if value is None:
                    return old
                if isinstance(value, jax.Array):  # restored onto the mesh, on every host
                    return value.astype(old.dtype)
                return jax.device_put(np.asarray(value, old.dtype), old.sharding)

            return jax.tree_util.tree_map_with_path(leaf, tree)

        state = state.replace(params=replace("params", state.params),
                              batch_stats=replace("batch_stats", state.batch_stats))
        return with_ema(state) if has_ema(state) else state


@dataclasses.dataclass
class Source:
    """Pretrained weights found and, for a checkpoint, verified. `stored_config`: the config dict
    stored with a checkpoint; `skipped`: why newer checkpoints of a workdir were passed over."""

    location: str
    kind: str  # "torchvision" or "checkpoint"
    directory: Optional[Any] = None  # the checkpoint's folder of step folders
    step: Optional[int] = None
    stored_config: Optional[dict] = None
    skipped: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "torchvision":
            return f"torchvision weights {self.location}"
        skipped = f" (newer ones not verified: {'; '.join(self.skipped)})" if self.skipped else ""
        return f"checkpoint step {self.step} of {self.directory}{skipped}"

    def normalization(self) -> str:
        """The normalisation the weights were trained with."""
        if self.kind == "torchvision":
            return TORCHVISION_NORMALIZATION
        stored = (self.stored_config or {}).get("data", {}).get("normalization")
        return stored or DEFAULT_NORMALIZATION

    def load(self, experiment, init_head: str) -> Loaded:
        """The source's arrays fitted to `experiment`'s model (see the module docstring)."""
        target = experiment.abstract_train_state()
        target_shapes = {k: v for c in COLLECTIONS  # params first: the first mismatch named
                         for k, v in array_shapes({c: getattr(target, c)}).items()}
        fit = functools.partial(self._fit, target_shapes=target_shapes, init_head=init_head,
                                num_classes=experiment.pipeline.num_classes,
                                model_name=experiment.config.model.name)
        if self.kind == "torchvision":
            return self._load_torchvision(target, fit)
        return self._load_checkpoint(experiment.mesh, fit)

    def _fit(self, source_shapes: dict, target_shapes: dict, num_classes: int,
             init_head: str, model_name: str) -> tuple[bool, str]:
        """Check the source against the target ({path: shape} maps); returns whether the
        classifier is kept and the header's line. Raises ConfigError naming the first array that
        differs."""
        bias = source_shapes.get(HEAD + "bias")
        source_classes = bias[-1] if bias else None
        if init_head == "keep" and source_classes != num_classes:
            raise ConfigError(f"config.init_head='keep', but the classifier of {self.describe()} "
                              f"has {source_classes or 'no'} classes and the data {num_classes}; "
                              "use init_head='auto' or 'reinit'")
        keep = init_head != "reinit" and source_classes == num_classes
        if not keep:
            source_shapes = {k: v for k, v in source_shapes.items() if not k.startswith(HEAD)}
            target_shapes = {k: v for k, v in target_shapes.items() if not k.startswith(HEAD)}
        problem = first_mismatch(source_shapes, target_shapes)
        if problem:
            raise ConfigError(f"config.init_from={self.location!r} does not fit "
                              f"config.model.name={model_name!r}: {problem}")
        params = sum(k.startswith("params/") for k in target_shapes)
        if keep:
            head = "classifier loaded"
        elif init_head == "reinit":
            head = "classifier re-initialised (init_head='reinit')"
        else:
            head = (f"classifier re-initialised ({num_classes} classes here, "
                    f"{source_classes or 'none'} in the source)")
        return keep, (f"init:     {params} parameter and {len(target_shapes) - params} BatchNorm "
                      f"statistic arrays from {self.describe()}; {head}; step and optimizer "
                      "state fresh")

    def _load_checkpoint(self, mesh, fit) -> Loaded:
        checkpointer = Checkpointer(self.directory, read_only=True)
        try:
            metadata = checkpointer.manager.item_metadata(self.step).state.tree
            saved = {k: v for k, v in array_shapes(metadata).items()
                     if k.split("/")[0] in COLLECTIONS}
            keep, note = fit(saved)
            replicated = parallel.replicated(mesh)
            # The whole saved state (Orbax restores no part of a tree); only COLLECTIONS are used.
            restored = checkpointer.restore(self.step, jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated), metadata))
        except (DamagedCheckpointError, UnverifiedCheckpointError) as e:
            raise ConfigError(f"config.init_from={self.location!r}: {e}") from None
        finally:
            checkpointer.close()
        flat = traverse_util.flatten_dict({c: restored.state[c] for c in COLLECTIONS}, sep="/")
        return Loaded({k: v for k, v in flat.items() if keep or not k.startswith(HEAD)}, note)

    def _load_torchvision(self, target, fit) -> Loaded:
        state_dict = read_state_dict(self.location)
        variables = {c: getattr(target, c) for c in COLLECTIONS}
        paths = list(traverse_util.flatten_dict(variables))
        source_shapes = convert.flax_layout_shapes(state_dict, paths)
        keep, note = fit(source_shapes)
        if not keep:
            variables = copy.copy(variables)
            variables["params"] = {k: v for k, v in variables["params"].items() if k != CLASSIFIER}
            head = convert.torch_name(("params", CLASSIFIER, "kernel")).split(".")[0] + "."
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(head)}
        arrays = convert.torchvision_to_flax(state_dict, variables)  # fits: `fit` checked it
        return Loaded(traverse_util.flatten_dict(arrays, sep="/"), note)


def torchvision_fields(state_dict: dict[str, np.ndarray], given: set[str]) -> dict:
    """The config fields torchvision weights bring to an evaluation that leaves them open (not in
    `given`, flat names such as "model.name"), as a nested dict for config.config_from_dict: the
    architecture whose arrays the state dict holds (convert.architecture) and, for a 1000-class
    classifier, ImageNet at torchvision's crop size 224. ConfigError when no architecture fits."""
    fields: dict[str, Any] = {}
    if "model.name" not in given:
        try:
            fields["model.name"] = convert.architecture(state_dict)
        except ValueError as e:
            raise ConfigError(f"{e}; name the model with --config.model.name") from None
    if convert.num_classes(state_dict) == IMAGENET_CLASSES:
        fields.update({"data.dataset": "imagenet2012", "data.image_size": TORCHVISION_CROP})
    return traverse_util.unflatten_dict(
        {tuple(k.split(".")): v for k, v in fields.items() if k not in given})


def read_state_dict(location: str, field: str = "config.init_from") -> dict[str, np.ndarray]:
    """convert.load_state_dict of a local or gs:// file (a remote one is copied to a temporary
    file first); a file that cannot be read is a one-line ConfigError naming `field`, the flag or
    config field that gave the location."""
    try:
        if not storage.is_object_store(location):
            return convert.load_state_dict(location)
        suffix = os.path.splitext(location)[1]
        with tempfile.NamedTemporaryFile(suffix=suffix) as local:
            local.write(storage.path(location).read_bytes())
            local.flush()
            return convert.load_state_dict(local.name)
    except Exception as e:  # noqa: BLE001 (safetensors, torch and the storage layer differ)
        raise ConfigError(f"{field}={location!r}: cannot read the weights: "
                          f"{' '.join(storage.cause(e).split())}") from None


def open_source(config) -> Optional[Source]:
    """The source config.init_from names (None when it names none), found and verified; raises
    ConfigError when there is nothing to load there, or the checkpoint is damaged or unverified."""
    location = config.init_from
    if not location:
        return None
    where = f"config.init_from={location!r}"
    if location.lower().endswith(convert.EXTENSIONS):
        if not storage.path(location).is_file():
            raise ConfigError(f"{where}: no such file")
        return Source(location, "torchvision")
    path = storage.path(location.rstrip("/"))
    if path.name.isdigit() and path.is_dir():
        directory, step = path.parent, int(path.name)
    elif (path / "checkpoints").is_dir():
        directory, step = path / "checkpoints", None
    else:
        raise ConfigError(f"{where} is neither a workdir of ours (with checkpoints/), a step "
                          f"folder (<workdir>/checkpoints/<step>) nor torchvision weights "
                          f"({', '.join(convert.EXTENSIONS)})")
    checkpointer = Checkpointer(directory, read_only=True)
    try:
        skipped: tuple[str, ...] = ()
        if step is None:  # the newest step that verifies
            step, problems = checkpointer.resume_candidates(allow_unverified=False)
            skipped = tuple(str(p) for p in problems)
            if step is None:
                reasons = "; ".join(skipped) or "it has none"
                raise ConfigError(f"{where}: no verified checkpoint to start from ({reasons})")
        else:
            checkpointer.verify(step)
        meta = checkpointer.restore_meta(step)
    except (DamagedCheckpointError, UnverifiedCheckpointError) as e:
        raise ConfigError(f"{where}: {e}") from None
    finally:
        checkpointer.close()
    return Source(location, "checkpoint", directory, step, meta.get("config"), skipped)


def with_source_preprocessing(config, source: Optional[Source]
                              ) -> tuple[ml_collections.ConfigDict, str]:
    """(a copy of `config` with the preprocessing the source brings filled in, the header's line
    saying what was used and where it came from); see the module docstring."""
    config = copy.deepcopy(config)
    data = config.data
    if data.normalization is not None:
        origin = "config"
    elif source is not None:
        data.normalization, origin = source.normalization(), "the source's"
    else:
        data.normalization, origin = DEFAULT_NORMALIZATION, "default"
    line = f"preproc:  normalization {data.normalization} ({origin})"
    if source is not None and source.kind == "torchvision" and data.resize_size is None:
        data.resize_size = round(data.image_size * TORCHVISION_CROP_RATIO)
        line += (f"; eval crop: shorter side {data.resize_size}, centre {data.image_size} "
                 "(torchvision's)")
    return config, line


def with_run_preprocessing(config, stored_config: dict) -> tuple[ml_collections.ConfigDict, str]:
    """For a run resuming from its own checkpoint: (a copy of `config` whose preprocessing fields
    left open (None) are those stored with the checkpoint, `stored_config`, the header's line).
    The run keeps what it started with, and its init_from source need no longer exist."""
    config = copy.deepcopy(config)
    data, stored = config.data, stored_config.get("data", {})
    origin = "config" if data.normalization is not None else "the run's own"
    for field in PREPROCESSING_FIELDS:
        if data[field] is None:
            data[field] = stored.get(field)
    return config, f"preproc:  normalization {data.normalization} ({origin})"
