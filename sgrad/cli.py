"""`sgrad-train`: check the command line, compose the Hydra config and hand it to the run loop.

Everything that can be refused is refused before Hydra creates a run dir: a
bad override, a value out of range, a rerun into a run dir made with other
settings. Each is one line on stderr and exit status 2.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sgrad.config import ConfigError, register
from sgrad.config.compose import CONFIG_DIR, compose_config
from sgrad.config.overrides import check_overrides

log = logging.getLogger("sgrad")

register()


# An existing run dir as it was before this start (preflight), put back if the start fails before training.
_START = None


def preflight(argv: list[str]) -> None:
    """Compose and validate a single run's config, and check its run dir, before Hydra touches the disk."""
    if any(a in ("-m", "--multirun") or a.startswith(("--cfg", "--help", "-h", "--info", "--hydra-help",
                                                        "--shell-completion", "-c"))
           for a in argv):
        return  # multirun jobs are checked one by one; the other flags write nothing
    overrides = [a for a in argv if not a.startswith("-")]
    cfg = compose_config(*overrides)
    from sgrad.run.build import check
    check(cfg)
    from sgrad.run.rundir import check_run_dir, check_writable
    run_dir = next((a.split("=", 1)[1] for a in overrides if a.startswith("hydra.run.dir=")), None)
    check_writable(run_dir or "outputs")  # Hydra's default run dirs live under ./outputs
    if run_dir:
        check_run_dir(cfg, run_dir)
        if Path(run_dir).is_dir():
            global _START
            from sgrad.run.rundir import StartRecord
            _START = StartRecord(run_dir)


def _shared_workdir(workdir: Path) -> Path:
    """With several processes, every process takes process 0's run dir (their clocks may differ by seconds)."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from sgrad.run.rundir import discard_stub
    encoded = np.zeros(4096, np.uint8)
    raw = str(workdir.absolute()).encode()
    encoded[:len(raw)] = np.frombuffer(raw, np.uint8)
    agreed = np.asarray(multihost_utils.broadcast_one_to_all(encoded))
    shared = Path(bytes(agreed[agreed != 0].tolist()).decode())
    if jax.process_index() != 0 and shared != workdir.absolute():
        discard_stub(workdir)  # the dir Hydra made from this process's own clock
    return shared


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _run(cfg: DictConfig) -> float:
    from sgrad.data import DatasetError
    from sgrad.run import train_and_evaluate
    from sgrad.run.rundir import discard_stub
    from sgrad.run.record import DivergenceError, Preempted

    # Orbax and JAX log every save and backend probe at INFO; keep the run log about training.
    for name in ("absl", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.WARNING)
    hydra_cfg = HydraConfig.get()
    workdir = Path(hydra_cfg.runtime.output_dir)
    if cfg.distributed:
        import jax
        # Must precede any other JAX call; SLURM / Open MPI / TPU settings are read from the environment.
        # JAX reads the coordinator from JAX_COORDINATOR_ADDRESS but not the process count and index: a launcher
        # without a cluster (scripts/launch_local.py) gives them as JAX_NUM_PROCESSES / JAX_PROCESS_ID.
        given = {key: int(os.environ[var]) for key, var in (("num_processes", "JAX_NUM_PROCESSES"),
                                                            ("process_id", "JAX_PROCESS_ID")) if var in os.environ}
        try:
            jax.distributed.initialize(**given)
        except (ValueError, RuntimeError) as e:
            print(f"sgrad-train: distributed=true found no cluster to join ({str(e).splitlines()[0]}): run it "
                  "where JAX detects one (SLURM, e.g. hydra/launcher=submitit_slurm; Open MPI's mpirun; "
                  "Kubernetes; Cloud TPU), on this machine with scripts/launch_local.py N, or leave "
                  "distributed=false for one process", file=sys.stderr)
            discard_stub(workdir)
            sys.exit(2)
        from sgrad.devices.processes import layout_refusal, warm_collectives
        refusal = layout_refusal(cfg.replicas)
        if refusal:
            print(f"sgrad-train: {refusal}", file=sys.stderr)
            discard_stub(workdir)
            sys.exit(2)
        warm_collectives()
        workdir = _shared_workdir(workdir)
        if jax.process_index() != 0:
            # One voice per run: only process 0 writes the log (the other processes' records would repeat it).
            logging.getLogger().handlers.clear()
            logging.getLogger("sgrad").setLevel(logging.WARNING)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # Parallel jobs (joblib, submitit) interleave their lines: each says which job it is.
        from sgrad.run.rundir import sweep_name, swept_settings
        swept = sweep_name(swept_settings())
        tag = f"[job {hydra_cfg.job.num}{' ' + swept if swept else ''}] "

        def prefix(record: logging.LogRecord) -> bool:
            record.msg = tag + str(record.msg)
            return True
        # The basic launcher runs every job in this process: each job's tag goes when the job ends.
        logging.getLogger("sgrad").addFilter(prefix)
    # Until the loop takes the signals over (sgrad.run.signals), SIGTERM interrupts start-up as Ctrl-C does; then,
    # until the first steps have run, a stop signal exits this process at once.
    from sgrad.run.signals import own_process
    own_process()
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = train_and_evaluate(cfg, workdir)
    except KeyboardInterrupt:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # the sweep's own handler says how to resume the whole sweep
        finished = _completed_summary(workdir)
        if finished is not None:
            # The signal came as the finished run handed its signals back: nothing was cut short.
            print(f"sgrad-train: stop signal after the run completed; {workdir} is complete", file=sys.stderr)
            return float(finished.get("objective", float("nan")))
        # Interrupted while loading data or building the network: nothing was trained, nothing is kept.
        discard_stub(workdir)
        if _START is not None:
            _START.restore()
        print(f"sgrad-train: interrupted during start-up, before any step was trained; "
              f"{'the run dir is as it was' if _START is not None else 'no run dir was left'}", file=sys.stderr)
        sys.exit(130)
    except Preempted as e:
        print(f"sgrad-train: {e}", file=sys.stderr)
        if cfg.distributed:  # every process stops at the same step, so under MPI they can leave together
            from sgrad.devices.processes import leave_mpi_world
            leave_mpi_world(128 + e.signum)
        sys.exit(128 + e.signum)
    except (ConfigError, DatasetError, DivergenceError, ValueError) as e:
        # One line for the user; the run dir keeps the logs and checkpoints written so far.
        print(f"sgrad-train: {e}", file=sys.stderr)
        if hydra_cfg.mode != RunMode.MULTIRUN:
            discard_stub(workdir)  # refused before anything ran: leave no empty run dir behind
            if _START is not None and isinstance(e, (ConfigError, DatasetError)):
                _START.restore()  # a rerun that could not start leaves the run it found byte for byte
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # Let the sweep go on; sgrad.run.callbacks.FailedJobs reports this job, and why, at the end.
            from sgrad.run.callbacks import record_failure
            record_failure(workdir, e)
            return float("nan")
        sys.exit(3 if isinstance(e, DivergenceError) else 2)
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        for f in list(logging.getLogger("sgrad").filters):
            logging.getLogger("sgrad").removeFilter(f)
    # The return value lets Hydra sweepers (e.g. optuna) optimise the task's objective.
    return float(summary["objective"])


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _completed_summary(workdir) -> dict | None:
    """The run's summary.json if it records a completed run, else None."""
    import json
    try:
        summary = json.loads((Path(workdir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("status") == "completed" else None


def typed_length_wins(argv: list[str]) -> list[str]:
    """trainer.steps and trainer.epochs both say how long to train, and epochs wins when both are set: so a
    trainer.steps the user types clears a preset's trainer.epochs (what is typed wins); typing both is refused."""
    typed = dict(a.lstrip("+~").split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    if "trainer.steps" not in typed:
        return argv
    if "trainer.epochs" in typed:
        if typed["trainer.epochs"].strip().lower() in ("null", "none"):
            return argv
        raise ConfigError("trainer.steps and trainer.epochs both set how long to train: give one of them")
    return argv + ["trainer.epochs=null"]


def main() -> None:
    try:
        sys.argv[1:] = typed_length_wins(sys.argv[1:])
        check_overrides(sys.argv[1:], CONFIG_DIR)
        preflight(sys.argv[1:])
    except ConfigError as e:
        print(f"sgrad-train: {e}", file=sys.stderr)
        sys.exit(2)
    _run()
    if "jax" in sys.modules:  # a run happened (not --help, --cfg)
        from sgrad.devices.processes import leave_mpi_world
        leave_mpi_world()  # only a run of several processes on MPI collectives leaves here; the others return


if __name__ == "__main__":
    main()
