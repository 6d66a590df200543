"""Multi-process start-up: `jax.distributed.initialize` when the environment describes a job of
several processes (one per host, or one per GPU), before anything touches a device.

Recognised environments, in order:
- explicit: `MDM_NUM_PROCESSES=N MDM_PROCESS_ID=i MDM_COORDINATOR=host:port` (any launcher:
  ssh loops, a shell script per GPU, tests on localhost);
- TPU pod slices (`TPU_WORKER_HOSTNAMES` lists more than one worker), SLURM (`SLURM_NTASKS` > 1)
  and Open MPI (`OMPI_COMM_WORLD_SIZE` > 1): JAX detects the coordinator and ids itself.
A single process (the default) initialises nothing.
"""

from __future__ import annotations

import logging
import os

import jax

from mdm.errors import ConfigError

log = logging.getLogger("mdm")


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} must be an integer") from None


def _cluster_detected() -> bool:
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return (
        len([h for h in hosts.split(",") if h]) > 1
        or int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1
        or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
    )


def initialize_from_env() -> bool:
    """Joins the multi-process job the environment describes; returns whether there is one."""
    explicit = [k for k in ("MDM_NUM_PROCESSES", "MDM_PROCESS_ID", "MDM_COORDINATOR") if k in os.environ]
    if explicit:
        if len(explicit) != 3:
            raise ConfigError(
                f"set all of MDM_NUM_PROCESSES, MDM_PROCESS_ID and MDM_COORDINATOR for a multi-process run (got {explicit})"
            )
        num, pid = _env_int("MDM_NUM_PROCESSES"), _env_int("MDM_PROCESS_ID")
        if not 0 <= pid < num:
            raise ConfigError(f"MDM_PROCESS_ID={pid} must lie in [0, MDM_NUM_PROCESSES={num})")
        if num == 1:
            return False
        # Cross-process collectives between CPU devices (tests, CPU clusters); GPUs/TPUs ignore it.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(os.environ["MDM_COORDINATOR"], num_processes=num, process_id=pid)
    elif _cluster_detected():
        jax.distributed.initialize()
    else:
        return False
    log.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True
