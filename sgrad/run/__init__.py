"""The run loop and the tasks it drives: `train_and_evaluate(cfg, workdir)` picks the task for the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any



def build_task(cfg: Any, dataset=None, text: dict | None = None):
    """The task of this experiment family: sequences (model=lstm), two clocks, language modelling
    (model=transformer), or classification."""
    from sgrad.run.build import task_family
    family = task_family(cfg)
    if family == "two_clocks":
        from sgrad.run.two_clocks import TwoClockTask
        return TwoClockTask(cfg)
    if family == "sequence":
        from sgrad.run.sequence import SequenceTask
        return SequenceTask(cfg, text)
    if str(cfg.model.name) == "transformer":
        from sgrad.run.language_model import LanguageModelTask
        return LanguageModelTask(cfg, text)
    from sgrad.run.classification import ClassificationTask
    return ClassificationTask(cfg, dataset)


def train_and_evaluate(cfg: Any, workdir: str | Path, dataset=None, text: dict | None = None) -> dict:
    """Validate `cfg`, build its task and run it in `workdir` (resuming what is there); returns the summary.

    `dataset` / `text` hand in data already loaded (tests, notebooks) instead of reading `cfg.dataset`.
    """
    from sgrad.run.build import check
    from sgrad.run.loop import run
    check(cfg)
    task = build_task(cfg, dataset, text)
    return run(cfg, workdir, task)
