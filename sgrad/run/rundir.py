"""A run dir belongs to one configuration: rerunning into it resumes only when the settings match.

`run_config.json` records the composed config when a run dir is first used.
A later run into the same dir may change only the settings in RESUMABLE (how
long, how often to log, evaluate and save, where the data lies); anything else
is refused before a file is touched, naming the keys that differ.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from sgrad.config import ConfigError, flat_config

RECORD = "run_config.json"
# Settings a resumed run may change: they decide how long and how often, not what is trained.
RESUMABLE = ("trainer.steps", "trainer.epochs", "trainer.eval_every", "trainer.log_every", "trainer.progress",
             "trainer.resume", "log.grad_probe_every", "log.tensorboard", "checkpoint.every", "checkpoint.keep",
             "dataset.dir", "dataset.download", "dataset.url", "dataset.checksum")


def differing_keys(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if k not in RESUMABLE and old.get(k) != new.get(k)]


def check_run_dir(cfg: Any, workdir: str | Path) -> None:
    """Raise ConfigError when `workdir` was made with a config that differs beyond RESUMABLE."""
    path = Path(workdir) / RECORD
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    new = flat_config(cfg)
    diffs = differing_keys(old, new)
    if diffs:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diffs[:6])
        more = f" and {len(diffs) - 6} more" if len(diffs) > 6 else ""
        raise ConfigError(
            f"run dir {workdir} was made with other settings ({shown}{more}); a rerun into it resumes, which "
            f"allows changing only {', '.join(RESUMABLE[:5])}, ... Nothing was changed: to start fresh, give "
            "another hydra.run.dir (or remove that dir)")


def record_config(cfg: Any, workdir: str | Path) -> None:
    """Write run_config.json the first time a run dir is used (never rewritten: it is what a resume matches)."""
    path = Path(workdir) / RECORD
    if not path.is_file():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(flat_config(cfg), indent=1, sort_keys=True) + "\n")
        tmp.replace(path)


def check_writable(run_dir: str | Path) -> None:
    """ConfigError naming the path and the reason when a run dir could not be created or written."""
    import tempfile
    path = Path(run_dir).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a directory")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write the run dir {path}: {existing}: {e.strerror or e} (pick another "
                          "hydra.run.dir, or run from a writable directory)") from None


def swept_settings() -> dict[str, str]:
    """This job's values of the settings its multirun varies ({} outside a multirun)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        hydra_cfg = HydraConfig.get()
    except (ValueError, ImportError):
        return {}
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return {}
    from sgrad.run.callbacks import SWEPT
    path = Path(hydra_cfg.sweep.dir) / SWEPT
    keys = set(json.loads(path.read_text())) if path.is_file() else set()
    out = {}
    for o in hydra_cfg.overrides.task:
        key, _, value = o.partition("=")
        if key.lstrip("+~") in keys:
            out[key.lstrip("+~")] = value
    return out


def sweep_name(swept: dict[str, str]) -> str:
    """`key=value,...` of what a multirun varies: the name of a job's TensorBoard run and its log tag."""
    return ",".join(f"{k}={v}" for k, v in sorted(swept.items()))


def single_run_name(cfg: Any) -> str | None:
    """A single sgrad-train run's TensorBoard name: its experiment (or dataset and model) and mode, e.g.
    `exp=mnist_dni,mode=cdni`, so that runs side by side under outputs/ are told apart by what they are, not
    only by their start time. None outside sgrad-train (the library, tests): event files go to <run>/tb."""
    try:
        from hydra.core.hydra_config import HydraConfig
        choices = HydraConfig.get().runtime.choices
    except (ImportError, ValueError):
        return None
    exp = choices.get("exp")
    what = f"exp={exp}" if exp else f"dataset={cfg.dataset.name},model={cfg.model.name}"
    return f"{what},mode={cfg.mode}"


def resume_command(workdir: str | Path) -> str:
    """The command that continues this run: this job's overrides, with the run dir pinned. In a multirun, the
    command that continues the whole sweep: the same sweep, with its sweep dir pinned (finished jobs are found
    finished, the interrupted one resumes from its checkpoint, the rest run)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        hydra_cfg = HydraConfig.get()
        overrides = list(hydra_cfg.overrides.task)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            sweep = [a for a in sys.argv[1:] if a not in ("-m", "--multirun") and not a.startswith("hydra.sweep.dir=")]
            return shlex.join(["sgrad-train", "-m", *sweep, f"hydra.sweep.dir={Path(hydra_cfg.sweep.dir).absolute()}"])
    except ValueError:  # not under Hydra (a notebook or a test calling the loop)
        overrides = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
    overrides = [o for o in overrides if not o.startswith("hydra.run.dir=")]
    return shlex.join(["sgrad-train", *overrides, f"hydra.run.dir={Path(workdir)}"])


def is_stub(workdir: str | Path) -> bool:
    """Whether `workdir` holds only what Hydra writes at job start (.hydra/ and its log): no run ever used it."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        return False
    return all(p.name == ".hydra" or (p.suffix == ".log" and p.is_file()) for p in workdir.iterdir())


def discard_stub(workdir: str | Path) -> None:
    """Remove `workdir` if no run ever used it (see is_stub); anything a run wrote is never touched."""
    if is_stub(workdir):
        import shutil
        shutil.rmtree(workdir)
        # Hydra's outputs/<date>/ made for it alone goes too (never a folder outside the working dir).
        cwd = Path.cwd().resolve()
        for parent in Path(workdir).resolve().parents:
            if parent == cwd or not parent.is_relative_to(cwd) or any(parent.iterdir()):
                break
            parent.rmdir()


class StartRecord:
    """What a start writes into an existing run dir before training (Hydra's .hydra/ files, the log), kept so that
    a start that fails or is refused can put the run dir back as it was, byte for byte."""

    def __init__(self, workdir: str | Path):
        self.root = Path(workdir)
        files = [p for p in self.root.rglob("*") if p.is_file()] if self.root.is_dir() else []
        self.existed = {p for p in files}
        self.saved = {p: p.read_bytes() for p in files if ".hydra" in p.relative_to(self.root).parts
                      or p.suffix == ".log"}

    def restore(self) -> None:
        """Close the log files the start opened in the run dir, drop what it added, rewrite what it changed."""
        import logging
        for logger in (logging.getLogger(), logging.getLogger("sgrad")):
            for handler in list(logger.handlers):
                name = getattr(handler, "baseFilename", None)
                if name and Path(name).resolve().is_relative_to(self.root.resolve()):
                    handler.close()
                    logger.removeHandler(handler)
        for p in sorted(self.root.rglob("*"), reverse=True):
            if p.is_file() and p not in self.existed:
                p.unlink()
            elif p.is_dir() and not any(p.iterdir()) and not any(q.is_relative_to(p) for q in self.existed):
                p.rmdir()
        for p, data in self.saved.items():
            if not p.exists() or p.read_bytes() != data:
                p.write_bytes(data)
