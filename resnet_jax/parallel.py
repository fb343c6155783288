"""Device mesh, shardings, multi-host start-up, and host-local -> global batches.

Data parallelism is `jax.jit` over a one-axis `Mesh` named "data" that spans every device of every
process: batches are sharded on their leading axis, parameters and optimizer state are replicated
(their sharding is a function of the mesh, so it can later shard them instead).
"""

import os
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# Environment variables by which jax.distributed.initialize() finds a cluster by itself.
_CLUSTER_ENV = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                "JAX_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE")


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
    """Join a multi-process run, from explicit arguments or the environment (SLURM, TPU pods).

    With no arguments and no cluster in the environment, does nothing (a single-process run). A SLURM
    job of one task is treated as single-process. Must run before anything touches a device.
    """
    if coordinator_address or num_processes or process_id is not None:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
        return
    if os.environ.get("SLURM_NTASKS", "1") == "1" and "SLURM_JOB_ID" in os.environ:
        return
    if any(k in os.environ for k in _CLUSTER_ENV):
        jax.distributed.initialize()


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
    """A one-axis mesh over `devices` (default: all devices of all processes, in process order)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,),
                axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each process's rows into global arrays sharded over the batch axis.

    local_batch values have leading dimension global_batch / process_count; the result has the global
    batch, process i holding rows [i * local, (i + 1) * local).
    """
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
