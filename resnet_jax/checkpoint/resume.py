"""The resume policy: which checkpoint a starting run trusts, what it sets aside, and how every
process of a multi-host run follows process 0's decision."""

from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from resnet_jax.checkpoint.checkpointer import Checkpointer
from resnet_jax.errors import InterruptedCheckpointError, NoGoodCheckpointError


def resume_step(checkpointer: Checkpointer, allow_unverified: bool = False,
                start_fresh: bool = False) -> Optional[int]:
    """The step to resume from, or None to start from step 0.

    Process 0 checks the checkpoints newest first. Damaged ones, and unverified ones unless
    `allow_unverified`, are set aside (one printed line each, naming the file and the reason)
    until one is good. When checkpoints exist but none is good:
    - if every one was interrupted (no integrity record: a run killed between Orbax's commit of
      its first kept checkpoint and the record), they are set aside and the run starts from step
      0 by itself, saying so in one line, so that an unattended restart (a requeued or preempted
      job) never waits for a person;
    - otherwise (a damaged or unreadable one) it raises NoGoodCheckpointError and moves nothing,
      unless `start_fresh`.
    Other processes follow its decision.
    """
    decision, error = None, None
    if jax.process_index() == 0:
        decision, problems = checkpointer.resume_candidates(allow_unverified)
        stuck = decision is None and problems and not start_fresh
        interrupted = all(isinstance(p, InterruptedCheckpointError) for p in problems)
        if stuck and not interrupted:
            error = NoGoodCheckpointError(
                f"no checkpoint in {checkpointer.directory} can be resumed from: "
                + "; ".join(str(p) for p in problems)
                + ". Restore an unverified one anyway with --allow_unverified_checkpoint, or set "
                "them aside and train from step 0 with --start_fresh_if_no_good_checkpoint")
        elif stuck:
            moved = [str(checkpointer.set_aside(p.step)) for p in problems]
            print(f"no checkpoint in {checkpointer.directory} was completed: the saves of steps "
                  f"{sorted(p.step for p in problems)} were cut short before their integrity "
                  f"records; set aside to {', '.join(moved)}; training from step 0", flush=True)
        else:
            for problem in problems:
                moved = checkpointer.set_aside(problem.step)
                print(f"{problem}; set aside to {moved}", flush=True)
    if jax.process_count() > 1:
        code = -2 if error else (-1 if decision is None else decision)
        code = int(multihost_utils.broadcast_one_to_all(np.int32(code)))
        checkpointer.reload()
        if code == -2 and error is None:
            error = NoGoodCheckpointError(f"no checkpoint in {checkpointer.directory} can be "
                                          "resumed from (process 0 says why)")
        decision = code if code >= 0 else None
    if error is not None:
        raise error
    return decision
