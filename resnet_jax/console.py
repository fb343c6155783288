"""What a run prints, on process 0 only: its plan (the start-up header, and --dry_run), a progress bar
on a terminal (tqdm), a line per log and eval step, and the final summary. Other processes print
nothing but errors; messages a researcher would filter go through absl logging instead.
"""

import sys
from typing import Optional, Sequence

import jax
from tqdm import tqdm

from resnet_jax import optim
from resnet_jax.compiled_memory import CompiledMemory
from resnet_jax.data import host_feed_dtype
from resnet_jax.plan import RunPlan


def header(plan: RunPlan, workdir: Optional[str], resume_step: Optional[int],
           memory: Optional[CompiledMemory] = None, memory_of: str = "train step") -> str:
    """The start-up header: model, devices, batch, data, length, schedule, XLA's compiled memory of
    `memory_of` (when `memory` is given), workdir, resumption."""
    c, d = plan.config, plan.data
    size, _, channels = d.image_shape
    per_process = plan.device_count // plan.process_count
    per_device = c.global_batch_size // plan.device_count
    if workdir is None:
        where = "workdir:  none (--dry_run)"
    elif resume_step is None:
        where = f"workdir:  {workdir} (new run)"
    else:
        where = f"workdir:  {workdir} (resuming from step {resume_step:,})"
    return "\n".join([
        f"model:    {c.model.name}, {plan.model.params:,} parameters, "
        f"{plan.model.macs / 1e6:,.1f} M MACs per {size}x{size}x{channels} image, {c.model.dtype}",
        f"devices:  {plan.process_count} process(es) x {per_process} {plan.device_kind} device(s) "
        f"= {plan.device_count}; global batch {c.global_batch_size} = {per_device} per device"
        + (f" in {c.accumulation_steps} micro-batches of {per_device // c.accumulation_steps}"
           if c.accumulation_steps > 1 else "")
        + (f", BatchNorm over groups of {c.model.bn_group_size}" if c.model.bn_group_size else ""),
        f"data:     {c.data.dataset}: {d.num_train_examples:,} train / {d.num_eval_examples:,} eval "
        f"examples, {d.num_classes} classes ({d.origin}); "
        + ("on the devices, " if plan.on_devices
           else f"host pipeline ({d.host_bytes_per_image:,} bytes per image), ")
        + f"{plan.steps_per_dispatch} step(s) per dispatch",
        f"length:   {plan.total_steps:,} steps = {plan.total_steps / plan.steps_per_epoch:,.2f} "
        f"epochs of {plan.steps_per_epoch:,} steps",
        f"schedule: {optim.describe_in_one_line(c.schedule, c.optimizer, c.global_batch_size)}",
        *([f"memory:   {memory_of}, XLA compiled: {memory.describe()}"] if memory else []),
        where,
    ])


def dry_run_report(plan: RunPlan, memory: Optional[CompiledMemory] = None) -> str:
    """--dry_run: the resolved config, the header (with `memory`, the train step's on a host feed:
    compiled_memory.planned_train_step_memory), the model summary and the schedule."""
    c = plan.config
    return "\n\n".join([
        "Resolved config:\n" + str(c),
        header(plan, None, None, memory,
               memory_of=f"train step on a host feed of {host_feed_dtype(c.data)} images"),
        "Model:\n" + plan.model.format(),
        "Schedule:\n" + optim.describe_schedule(c.schedule, plan.steps_per_epoch,
                                                c.global_batch_size),
    ])


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Console:
    """Process 0's output during a run: a tqdm bar on a terminal, and lines above it."""

    def __init__(self, total_steps: int, start_step: int):
        self.enabled = jax.process_index() == 0
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        disable=not (self.enabled and sys.stdout.isatty()), file=sys.stdout)

    def print(self, line: str) -> None:
        if self.enabled:
            self.bar.write(line, file=sys.stdout)
            sys.stdout.flush()

    def advance(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def close(self) -> None:
        self.bar.close()


def final_summary(workdir: str, step: int, total_steps: int, wall_seconds: float,
                  records: Sequence[dict], checkpoint_dir: Optional[str],
                  time_line: Optional[str] = None) -> str:
    """The closing lines: the final and best eval top-1/top-5 with their steps (of the EMA weights
    too, when evaluated), wall time, mean images/s, where the wall time went (`time_line`,
    phase_clock.describe), the last checkpoint and the eval.py command for it. `records`:
    metrics.jsonl's."""
    evals = [r for r in records if r["split"] == "eval"]
    speeds = [r["images_per_sec"] for r in records if r["split"] == "train" and
              "images_per_sec" in r]
    state = "complete" if step >= total_steps else "stopped"
    lines = [f"run {state} at step {step:,} of {total_steps:,}; this session's wall time "
             f"{format_duration(wall_seconds)}"
             + (f", mean {sum(speeds) / len(speeds):,.0f} images/s" if speeds else "")]
    if time_line:
        lines.append(time_line)
    ema = [r for r in evals if "ema_top1" in r]
    for label, prefix, rows in (("eval:    ", "", evals), ("eval EMA:", "ema_", ema)):
        if rows:
            final, best = rows[-1], max(rows, key=lambda r: r[prefix + "top1"])
            lines.append(f"{label} final top-1 {100 * final[prefix + 'top1']:.2f}% top-5 "
                         f"{100 * final[prefix + 'top5']:.2f}% (step {final['step']:,}); best "
                         f"top-1 {100 * best[prefix + 'top1']:.2f}% (step {best['step']:,})")
    if checkpoint_dir:
        lines.append(f"checkpoint: {checkpoint_dir}")
        lines.append(f"evaluate:   python eval.py --workdir {workdir}"
                     + (" (add --ema for the EMA weights)" if ema else ""))
    return "\n".join(lines)
