"""Orbax checkpoints of the whole train state, each with an integrity record that cannot be switched
off; last K kept plus the best.

Layout: `<directory>/<step>/{state, meta, checksums.json}`, local or gs://. `state` holds the
TrainState pytree, `meta` (JSON) the data position, the config and the metrics. Only good
checkpoints are restored, unless the caller explicitly allows unverified ones; damaged and
unverified checkpoints met when resuming are set aside into `<directory>_set_aside/`, never deleted.

Modules, one job each:
- checkpointer: the Orbax wiring (`Checkpointer`: save, restore, list, set aside, close);
- integrity: the SHA-256 integrity records (`checksums.json`): writing, verifying, comparing;
- compatibility: whether saved arrays fit a target state (array_shapes, first_mismatch);
- resume: which step a starting run trusts and what it sets aside (`resume_step`);
"""

from resnet_jax.checkpoint.checkpointer import Checkpointer, Restored
from resnet_jax.checkpoint.compatibility import first_mismatch
from resnet_jax.checkpoint.integrity import CHECKSUMS, VERIFIED
from resnet_jax.checkpoint.resume import resume_step

__all__ = ["CHECKSUMS", "VERIFIED", "Checkpointer", "Restored", "first_mismatch", "resume_step"]
