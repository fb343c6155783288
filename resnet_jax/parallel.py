"""Device mesh, shardings, multi-host start-up, and host-local -> global batches.

Data parallelism is `jax.jit` over a one-axis `Mesh` named "data" that spans every device of every
process: batches are sharded on their leading axis, parameters and optimizer state are replicated
(their sharding is a function of the mesh, so it can later shard them instead).
"""

from typing import Optional

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax.library_errors import is_no_cluster

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
    """Join a multi-process run, from explicit arguments or by JAX's own cluster detection.

    `jax.distributed.initialize` finds SLURM, Open MPI, Kubernetes and Cloud TPU VMs (through their
    metadata, asked only on a TPU VM) by itself; with no arguments and no cluster found this is a
    single-process run and returns at once. Processes other than 0 then log errors only. Must run
    before anything touches a device.
    """
    explicit = coordinator_address or num_processes or process_id is not None
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    except ValueError as e:
        if explicit or not is_no_cluster(e):
            raise
        return
    logging.info("process %d of %d joined; %d local of %d devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    if jax.process_index() > 0:
        logging.set_verbosity(logging.ERROR)  # process 0 speaks for the run


def define_distributed_flags() -> None:
    """absl flags --coordinator_address, --num_processes, --process_id (train.py, eval.py)."""
    from absl import flags

    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
    flags.DEFINE_integer("process_id", None, "Index of this process (multi-host).")


def initialize_from_flags() -> None:
    """initialize_distributed from the flags of define_distributed_flags (or the environment)."""
    from absl import flags

    f = flags.FLAGS
    initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)


def make_mesh(devices=None) -> Mesh:
    """A one-axis mesh over `devices` (default: all devices of all processes), in the
    topology-aware order of `jax.make_mesh`. Its axis is Auto: jit places the collectives."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def steps_batch_sharded(mesh: Mesh) -> NamedSharding:
    """[steps, batch, ...] arrays: the batch axis (the second) split over the data axis."""
    return NamedSharding(mesh, P(None, DATA_AXIS))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh,
                 steps_axis: bool = False) -> dict[str, jax.Array]:
    """Assemble each process's rows into global arrays sharded over the batch axis.

    local_batch values have leading dimension global_batch / process_count (after a leading steps
    axis if `steps_axis`); the result has the global batch, process i holding rows
    [i * local, (i + 1) * local).
    """
    sharding = steps_batch_sharded(mesh) if steps_axis else batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def replicate(arrays, mesh: Mesh):
    """The same host arrays (a pytree, equal on every process) as arrays replicated on every
    device."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda v: jax.make_array_from_callback(
        np.shape(v), sharding, lambda index: np.asarray(v)[index]), arrays)
