"""Offline evaluation (`run`, behind eval.py): a run's checkpoints (the latest, one step, every kept
step, or each new one as training writes it) or imported torchvision weights, evaluated over the
whole eval split with the training loop's `evaluation.evaluate`.

With `ema` a checkpoint's EMA weights (config.ema_decay) are evaluated instead of its raw weights.
Results go to `<out>/<name>/<key>.json` (key: the step, or `torchvision_<weights stem>`),
to `<out>/metrics.jsonl` as records of split `<name>`, and to TensorBoard under
`<out>/tensorboard/<name>`. `<out>` is the workdir, or beside what was evaluated: the workdir of a
`<workdir>/checkpoints/<step>` folder, else the folder holding the step folder or weights file.
Nothing is written inside a checkpoint.
"""

import copy
import dataclasses
import json
import time
from typing import Optional

import jax
import ml_collections
import numpy as np

from resnet_jax import parallel, storage
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.config import config_from_dict, model_options
from resnet_jax.errors import (ConfigError, DamagedCheckpointError, EvalError,
                               IncompatibleCheckpointError, UnverifiedCheckpointError)
from resnet_jax.evaluation import evaluate
from resnet_jax.metric_writers import MetricWriter
from resnet_jax.pretrained import (Source, read_state_dict, torchvision_fields,
                                   with_source_preprocessing)
from resnet_jax.restore import ExperimentCache, restore
from resnet_jax.steps import ema_weights, has_ema

SCALARS = ("loss", "top1", "top5", "count")
RESERVED_NAMES = ("train", "eval")  # the training loop's own splits


@dataclasses.dataclass
class Request:
    """What to evaluate and how (the eval.py flags). Sources, one of: `workdir` (its latest
    checkpoint, or `step`, or `all_steps`, or `watch`), `checkpoint` (a step folder), or
    `torchvision_weights` (evaluated as pretrained.torchvision_fields says, unless `config` is
    given; `overrides` apply on top).
    Checkpoints without a readable integrity record are refused unless `allow_unverified`.
    `ema`: evaluate the checkpoints' EMA weights; `name` (the results' split) defaults to
    eval_offline, or eval_offline_ema with `ema`."""

    workdir: Optional[str] = None
    step: Optional[int] = None
    all_steps: bool = False
    watch: bool = False
    watch_timeout: float = 3600.0
    poll_seconds: float = 10.0
    checkpoint: Optional[str] = None
    torchvision_weights: Optional[str] = None
    config: Optional[ml_collections.ConfigDict] = None  # replaces the stored config when given
    overrides: dict = dataclasses.field(default_factory=dict)  # {"data.data_dir": value, ...}
    per_class: bool = False
    allow_unverified: bool = False
    ema: bool = False
    name: Optional[str] = None
    devices: Optional[list] = None

    def __post_init__(self):
        if self.name is None:
            self.name = "eval_offline_ema" if self.ema else "eval_offline"


def resolve_config(request: Request, stored: Optional[dict]) -> ml_collections.ConfigDict:
    """`request.config` if given, else the `stored` config dict read into the schema (else the
    schema's defaults), with `request.overrides` applied on top."""
    if request.config is not None:
        config = copy.deepcopy(request.config)
    else:
        try:
            config = config_from_dict(stored or {})
        except ConfigError as e:
            raise ConfigError(f"the stored config does not fit this code's schema ({e}); pass "
                              "--config with a config file instead") from None
    config.update_from_flattened_dict(request.overrides)
    return config


class _Session:
    """Builds experiments (one per distinct config), evaluates and writes and prints results."""

    def __init__(self, request: Request, out_dir: storage.PathLike):
        self.request, self.out_dir = request, storage.path(out_dir)
        self.experiments = ExperimentCache(request.devices)
        self._writer: Optional[MetricWriter] = None
        self.is_main = jax.process_index() == 0
        self._header_printed = False

    def measure(self, exp, state) -> dict:
        metrics = evaluate(exp, state, self.request.per_class)
        expected = exp.pipeline.num_eval_examples
        if metrics["count"] != expected:
            raise EvalError(f"evaluated {metrics['count']:.0f} examples but the eval split has "
                            f"{expected}: the input pipeline dropped or repeated examples")
        return metrics

    def report(self, key: str, step: int, source: str, config, metrics: dict, checked: str,
               exp) -> dict:
        """Write the result of one evaluation (JSON, metrics.jsonl, TensorBoard); print its row."""
        record = {"step": step, "source": source, "name": self.request.name,
                  "weights": "ema" if self.request.ema else "raw",
                  "final_step": exp.total_steps, "devices": exp.mesh.size, "checked": checked,
                  "time": round(time.time(), 3), "metrics": metrics, "config": config.to_dict()}
        if self.is_main:
            storage.write_atomic(self.out_dir / self.request.name / f"{key}.json",
                                 json.dumps(record, indent=2, default=str))
            if self._writer is None:
                self._writer = MetricWriter(self.out_dir, tensorboard=config.tensorboard)
            self._writer.write(step, self.request.name, {k: metrics[k] for k in SCALARS})
            self.row(f"{key:>10} {metrics['loss']:>9.4f} {100 * metrics['top1']:>7.2f}% "
                     f"{100 * metrics['top5']:>7.2f}% {metrics['count']:>9.0f}  {checked}")
            if self.request.per_class:
                print(_format_per_class(metrics), flush=True)
        return record

    def row(self, line: str) -> None:
        if not self.is_main:
            return
        if not self._header_printed:
            devices = len(self.request.devices or jax.devices())
            folder = self.out_dir / self.request.name
            print(f"Evaluating ({self.request.name}) on {devices} device(s); results in {folder}\n"
                  f"{'step':>10} {'loss':>9} {'top-1':>8} {'top-5':>8} {'examples':>9}  checked",
                  flush=True)
            self._header_printed = True
        print(line, flush=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _format_per_class(metrics: dict) -> str:
    """A table of top-1 and example count per class."""
    lines = [f"{'class':>10} {'top-1':>8} {'examples':>9}"]
    for c, (acc, n) in enumerate(zip(metrics["per_class_top1"], metrics["per_class_count"])):
        lines.append(f"{c:>10} {'-' if acc is None else f'{100 * acc:.2f}%':>8} {n:>9}")
    return "\n".join(lines)


def _evaluate_step(session: _Session, ckpt: Checkpointer, step: int) -> dict:
    """Verify, restore and evaluate checkpoint `step` of `ckpt`; returns the written record."""
    request = session.request
    restored = restore(ckpt, step, lambda stored: resolve_config(request, stored),
                       session.experiments, request.allow_unverified)
    exp, state = restored.experiment, restored.state
    if request.ema:
        if not has_ema(state):
            raise EvalError(f"--ema: checkpoint step {step} in {ckpt.directory} has no EMA weights "
                            "(it was trained without config.ema_decay)")
        state = ema_weights(state)
    return session.report(str(step), step, str(ckpt.step_dir(step)), exp.config,
                          session.measure(exp, state), restored.checked, exp)


def _evaluate_torchvision(session: _Session) -> dict:
    """Evaluate torchvision weights: under `request.config` if given, else the schema's defaults
    with what the weights bring (pretrained.torchvision_fields: the architecture, ImageNet at 224
    for a 1000-class classifier); `request.overrides` on top; torchvision's preprocessing where
    that leaves it open (pretrained.with_source_preprocessing)."""
    from resnet_jax.convert import import_torchvision
    from resnet_jax.steps import TrainState

    request = session.request
    state_dict = read_state_dict(request.torchvision_weights, "--torchvision_weights")
    brought = (None if request.config is not None else
               torchvision_fields(state_dict, set(request.overrides)))
    config, _ = with_source_preprocessing(resolve_config(request, brought),
                                          Source(request.torchvision_weights, "torchvision"))
    exp = session.experiments.get(config)
    try:
        _, variables = import_torchvision(config.model.name, state_dict,
                                          num_classes=exp.pipeline.num_classes,
                                          **model_options(config))
    except ValueError as e:
        raise EvalError(f"cannot load torchvision weights {request.torchvision_weights!r} into "
                        f"{config.model.name!r}: {e}") from None
    state = jax.device_put(
        TrainState(step=np.zeros((), np.int32), params=variables["params"],
                   batch_stats=variables["batch_stats"], opt_state=()),
        parallel.replicated(exp.mesh))
    key = "torchvision_" + storage.path(request.torchvision_weights).stem
    return session.report(key, 0, request.torchvision_weights, config,
                          session.measure(exp, state), "imported", exp)


def _open_checkpoints(request: Request) -> tuple[Checkpointer, str, Optional[int]]:
    """(checkpointer, output folder, step of a --checkpoint folder or None) for the request."""
    if request.checkpoint:
        path = storage.path(request.checkpoint.rstrip("/"))
        if not path.is_dir():
            raise EvalError(f"no checkpoint at {request.checkpoint!r}")
        if not path.name.isdigit():
            raise EvalError(f"{request.checkpoint!r} is not a checkpoint step folder: expected "
                            "<directory>/<step> as training writes it, holding state/ and meta/")
        parent = path.parent
        out = request.workdir or (parent.parent if parent.name == "checkpoints" else parent)
        return Checkpointer(parent, read_only=True), out, int(path.name)
    if not request.workdir:
        raise EvalError("give --workdir (a training run's folder), --checkpoint or "
                        "--torchvision_weights")
    if not storage.path(request.workdir).is_dir():
        raise EvalError(f"no workdir {request.workdir!r}: the folder does not exist")
    directory = storage.path(request.workdir) / "checkpoints"
    if not request.watch and not directory.is_dir():
        raise EvalError(f"no checkpoint in {request.workdir!r}: it has no checkpoints/ folder "
                        "(has training saved one yet?)")
    return Checkpointer(directory, read_only=True), request.workdir, None


def _check_request(request: Request) -> None:
    chosen = [flag for flag, given in (
        ("--step", request.step is not None), ("--all", request.all_steps),
        ("--watch", request.watch), ("--checkpoint", bool(request.checkpoint)),
        ("--torchvision_weights", bool(request.torchvision_weights))) if given]
    if len(chosen) > 1:
        raise EvalError(f"{' and '.join(chosen)} exclude each other; choose one")
    if request.ema and request.torchvision_weights:
        raise EvalError("--ema needs a checkpoint trained with config.ema_decay; torchvision "
                        "weights have no EMA")
    if request.name in RESERVED_NAMES or not request.name.isidentifier():
        raise EvalError(f"--name={request.name!r} must be an identifier other than "
                        f"{' and '.join(RESERVED_NAMES)} (the training loop's splits)")


def run(request: Request) -> list[dict]:
    """Carry out an evaluation request; returns the records written (one per evaluation).

    Raises EvalError for anything the user must fix: no workdir, no checkpoint, a damaged checkpoint
    (naming the file; for a damaged latest, offering the previous step), a config that does not fit
    the saved parameters (naming the first array and both shapes), an invalid config.
    """
    _check_request(request)
    ckpt = step = None
    if request.torchvision_weights:
        out = request.workdir or storage.path(request.torchvision_weights).parent
    else:
        ckpt, out, step = _open_checkpoints(request)
    session = _Session(request, out)
    try:
        if ckpt is None:
            return [_evaluate_torchvision(session)]
        if request.watch:
            return _watch(session, ckpt)
        return _evaluate_kept(session, ckpt, step)
    except (ConfigError, DamagedCheckpointError, IncompatibleCheckpointError,
            UnverifiedCheckpointError) as e:
        raise EvalError(str(e)) from e
    finally:
        session.close()
        if ckpt is not None:
            ckpt.close()


def _flag(session: _Session, ckpt: Checkpointer, error, bad: list[int]) -> None:
    """Print the row of a damaged or unverified step (then appended to `bad`), or of one the run
    removed while it was being read."""
    ckpt.reload()
    if error.step in ckpt.all_steps():
        bad.append(error.step)
        kind = "DAMAGED" if isinstance(error, DamagedCheckpointError) else "UNVERIFIED"
        session.row(f"{error.step:>10} {kind}: {error.path}: {error.reason}")
    else:
        session.row(f"{error.step:>10} skipped: removed by the run (its retention policy, or set "
                    "aside on resume) before it could be evaluated")


def _raise_if_bad(bad: list[int]) -> None:
    if bad:
        raise EvalError(f"checkpoint steps {sorted(bad)} are damaged or unverified (see above); "
                        "the others were evaluated and written")


def _evaluate_kept(session: _Session, ckpt: Checkpointer, step: Optional[int]) -> list[dict]:
    """The latest checkpoint, or the requested step, or every kept step (--all)."""
    request, steps = session.request, ckpt.all_steps()
    if not steps:
        raise EvalError(f"no checkpoint in {ckpt.directory!r} (has training saved one yet?)")
    chosen = request.step if request.step is not None else step
    if chosen is not None and chosen not in steps:
        raise EvalError(f"no checkpoint step {chosen} in {ckpt.directory!r}; kept steps: {steps}")
    if not request.all_steps:
        try:
            return [_evaluate_step(session, ckpt, steps[-1] if chosen is None else chosen)]
        except (DamagedCheckpointError, UnverifiedCheckpointError) as e:
            anyway = (" Evaluate it anyway with --allow_unverified_checkpoint."
                      if isinstance(e, UnverifiedCheckpointError) else "")
            if chosen is not None:
                raise EvalError(f"{e}.{anyway}") from e
            earlier = steps[:-1]
            offer = (f" The previous checkpoint is step {earlier[-1]}: evaluate it with "
                     f"--step={earlier[-1]}." if earlier else " There is no earlier checkpoint.")
            raise EvalError(f"the latest {e}.{offer}{anyway}") from e
    bad: list[int] = []
    records = []
    for s in steps:
        try:
            records.append(_evaluate_step(session, ckpt, s))
        except (DamagedCheckpointError, UnverifiedCheckpointError) as e:
            _flag(session, ckpt, e, bad)
    _raise_if_bad(bad)
    return records


def _watch(session: _Session, ckpt: Checkpointer) -> list[dict]:
    """Evaluate each checkpoint as it appears, in step order, until the final step (the schedule's
    length) is done or `watch_timeout` seconds pass without a new one.

    A step whose integrity record is not there yet (training writes it just after the step is
    committed) is tried again at each poll; if the watch ends first, it is reported unverified.
    """
    request = session.request
    records, bad, last = [], [], -1
    unrecorded: dict[int, UnverifiedCheckpointError] = {}
    deadline = time.monotonic() + request.watch_timeout
    if session.is_main:
        print(f"Watching {ckpt.directory} for checkpoints (stops after the final step, or after "
              f"{request.watch_timeout:g} s without a new one)", flush=True)
    while True:
        ckpt.reload()
        for step in sorted({s for s in ckpt.all_steps() if s > last} | set(unrecorded)):
            last = max(last, step)
            try:
                records.append(_evaluate_step(session, ckpt, step))
                unrecorded.pop(step, None)
                deadline = time.monotonic() + request.watch_timeout
            except UnverifiedCheckpointError as e:
                unrecorded[step] = e
            except DamagedCheckpointError as e:
                _flag(session, ckpt, e, bad)
            except (FileNotFoundError, NotADirectoryError) as e:  # the run removed it mid-read
                _flag(session, ckpt, DamagedCheckpointError(step, str(e), "a file vanished while "
                                                            "it was read"), bad)
        if records and last >= records[-1]["final_step"] and not unrecorded:
            break
        if time.monotonic() >= deadline:
            if session.is_main:
                print(f"No new checkpoint for {request.watch_timeout:g} s; stopped after step "
                      f"{last if last >= 0 else 'none'}.", flush=True)
            break
        time.sleep(request.poll_seconds)
    for error in unrecorded.values():
        _flag(session, ckpt, error, bad)
    _raise_if_bad(bad)
    return records
