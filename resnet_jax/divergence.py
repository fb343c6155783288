"""What a diverged run says: which quantities became non-finite, and which checkpoint is the last
good one, or that there is none."""

from resnet_jax.checkpoint import Checkpointer
from resnet_jax.errors import NonFiniteLossError, StorageError

# train_step's "finite" flags, in causal order, and how the message names them.
QUANTITIES = {"loss": "loss", "gradients": "gradients", "parameters": "parameters",
              "bn_statistics": "BN statistics"}


def nonfinite_quantities(finite: dict) -> list[str]:
    """Names of the quantities whose flag in train_step's metrics["finite"] is false."""
    return [QUANTITIES[key] for key in QUANTITIES if not bool(finite[key])]


def divergence_error(step: int, metrics: dict, checkpointer: Checkpointer) -> NonFiniteLossError:
    """The error to raise when step `step`'s fetched metrics have a false "finite" flag.

    Waits for the save in flight, then names the newest checkpoint that verifies (all checkpoints
    are saved after their metrics were checked, so it precedes the divergence) or says there is none.
    """
    bad = ", ".join(nonfinite_quantities(metrics["finite"]))
    try:
        good = checkpointer.newest_good_step()
        last = (f"the last good checkpoint is step {good} ({checkpointer.step_dir(good)})"
                if good is not None else
                f"there is no good checkpoint in {checkpointer.directory} to resume from")
    except StorageError as e:
        last = f"the last checkpoint save failed ({e}), so none is known to be good"
    return NonFiniteLossError(
        f"training diverged at step {step}: non-finite {bad} (loss {float(metrics['loss'])}, "
        f"gradient norm {float(metrics['grad_norm'])}); {last}")
