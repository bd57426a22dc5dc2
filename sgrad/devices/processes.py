"""Processes that each drive one CPU device (launch_local, the multi-process benchmarks): their environment,
how they start, and their collectives' set-up."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Mapping, Sequence

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def one_device_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (the current environment by default) for a process that must see one CPU device: XLA's forced
    device count dropped from XLA_FLAGS, every other flag the caller set (compile options, say) kept."""
    env = dict(os.environ if env is None else env)
    flags = [f for f in env.pop("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    return env


def device_count_env(n: int, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` for a process that must see `n` CPU devices: XLA's forced device count set to `n`, every other flag
    the caller set kept (as one_device_env)."""
    env = one_device_env(env)
    env["XLA_FLAGS"] = f"{DEVICE_COUNT_FLAG}={n} {env.get('XLA_FLAGS', '')}".strip()
    return env


def start_processes(commands: Sequence[Sequence[str]], env: Mapping[str, str], cores: Sequence[int] | None = None,
                    **popen) -> list[subprocess.Popen]:
    """Start commands[i] as process i of one jax.distributed run (JAX_PROCESS_ID=i in its environment), pinned to
    cores[i] (taskset) when given.

    With JAX's MPI collectives (JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi in `env`) the processes must form one MPI
    world, so one `mpiexec` (MPICH's or Open MPI's, from PATH or $MPIEXEC) starts them all, one block per process,
    and the list holds that one launcher; it passes SIGTERM on to them. With gloo each is its own process.
    """
    pinned = [[*(["taskset", "-c", str(cores[i])] if cores is not None else []), *cmd]
              for i, cmd in enumerate(commands)]
    if env.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION") != "mpi":
        return [subprocess.Popen(cmd, env={**env, "JAX_PROCESS_ID": str(i)}, **popen) for i, cmd in enumerate(pinned)]
    mpiexec = env.get("MPIEXEC") or shutil.which("mpiexec", path=env.get("PATH"))
    if not mpiexec:
        raise RuntimeError("JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi needs an mpiexec on PATH (or MPIEXEC=...): "
                           "see docs/parallelism.md, Transport")
    if not env.get("MPITRAMPOLINE_LIB"):
        raise RuntimeError("JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi needs MPITRAMPOLINE_LIB, an MPIwrapper library "
                           "built against this MPI: see docs/parallelism.md, Transport")
    blocks = []
    for i, cmd in enumerate(pinned):
        blocks += [*([":"] if i else []), "-n", "1", "-env", "JAX_PROCESS_ID", str(i), *cmd]
    return [subprocess.Popen([mpiexec, *blocks], env=dict(env), **popen)]


def warm_collectives() -> None:
    """Under JAX's MPI collectives, make the communicator of all of the run's devices now, on this thread.

    XLA:CPU's MPI collectives refuse to make a communicator on any thread but the one that initialised MPI, and a
    program of real size runs its collectives on XLA's worker threads; communicators are made once per set of
    devices and then reused from any thread. So one tiny collective over every device, run here, serves every
    later program over them (the data layout's mean, a pipeline's swaps). A pipeline with replicas also averages
    over groups of devices, which this does not make: sgrad-train refuses that layout under MPI on CPU
    (layout_refusal). Nothing to do under gloo.
    """
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    if jax.config.jax_cpu_collectives_implementation == "mpi" and jax.process_count() > 1:
        np.asarray(multihost_utils.broadcast_one_to_all(np.zeros(1, np.float32)))


def leave_mpi_world(code: int = 0) -> None:
    """End this process now, once every process of the run has come here, its output flushed, where JAX's MPI
    collectives are in use; otherwise return.

    The interpreter's own teardown frees XLA's MPI communicators after MPI has been finalized, and MPICH then
    fails the process that had finished its work; and mpiexec ends every process of the world once one has
    ended, so none may leave while another still works."""
    import sys

    import jax
    from jax.experimental import multihost_utils
    if jax.config.jax_cpu_collectives_implementation == "mpi" and jax.process_count() > 1:
        multihost_utils.sync_global_devices("sgrad: leaving")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def layout_refusal(replicas: int) -> str | None:
    """Why a run of `replicas` pipeline copies cannot run on the collectives in use here, or None."""
    import jax
    if replicas > 1 and jax.config.jax_cpu_collectives_implementation == "mpi" and jax.default_backend() == "cpu":
        return (f"replicas={replicas} cannot run on JAX's MPI collectives on CPU: its replica groups' communicators "
                "would be made on XLA's worker threads, which XLA:CPU refuses; run it with "
                "JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo")
    return None
