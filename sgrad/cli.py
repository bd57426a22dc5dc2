"""`sgrad-train`: compose the Hydra config, check it, and call train_and_evaluate in the run dir."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sgrad.config import ConfigError, register
from sgrad.overrides import check_overrides

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
log = logging.getLogger("sgrad")

register()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _run(cfg: DictConfig) -> float:
    from sgrad.data import DatasetError
    from sgrad.run_record import DivergenceError, Preempted
    from sgrad.train import train_and_evaluate
    from sgrad.train_recurrent import train_recurrent

    # Orbax and JAX log every save and backend probe at INFO; keep the run log about training.
    for name in ("absl", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.WARNING)
    hydra_cfg = HydraConfig.get()
    workdir = Path(hydra_cfg.runtime.output_dir)
    if cfg.distributed:
        import jax
        # Must precede any other JAX call; SLURM / Open MPI / TPU settings are read from the environment.
        jax.distributed.initialize()
    try:
        recurrent = str(getattr(cfg.model.name, "value", cfg.model.name)) == "lstm"
        summary = (train_recurrent if recurrent else train_and_evaluate)(cfg, workdir)
    except Preempted as e:
        print(f"sgrad-train: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except (ConfigError, DatasetError, DivergenceError, ValueError) as e:
        # One line for the user; the run dir keeps the logs and checkpoints written so far.
        print(f"sgrad-train: {e}", file=sys.stderr)
        log.error("%s", e)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # Let the sweep go on; sgrad.callbacks.FailedJobs reports this job at the end.
            return float("nan")
        sys.exit(3 if isinstance(e, DivergenceError) else 2)
    # The return value lets Hydra sweepers (e.g. optuna) optimise test error.
    return float(summary.get("test/error", summary.get("test/bpc", -summary.get("max_length_solved", 0))))


def main() -> None:
    try:
        check_overrides(sys.argv[1:], CONFIG_DIR)
    except ConfigError as e:
        print(f"sgrad-train: {e}", file=sys.stderr)
        sys.exit(2)
    _run()


if __name__ == "__main__":
    main()
