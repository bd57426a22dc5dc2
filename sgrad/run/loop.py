"""The one run loop: every experiment is a Task (sgrad/run/task.py) that this loop drives.

Everything a run does besides computing is written here and only here: the
run-config record and its check on rerun, resume (in place or from
`trainer.resume`), rewinding the logs, SIGTERM/SIGINT, divergence, checkpoints,
the chunk grid and the eval/probe cadence, progress, log lines and summary.json.
With several processes (`distributed=true`) only process 0 writes logs, metrics
and the summary; checkpoints are collective and a stop request is agreed on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from sgrad.run.checkpoint import Checkpoints, find_checkpoint_dir
from sgrad.run.metrics import MetricWriter, read_jsonl, rewind
from sgrad.config import flat_config
from sgrad.run.rundir import (check_run_dir, record_config, resume_command, single_run_name, sweep_name,
                               swept_settings)
from sgrad.run.signals import StopRequest
from sgrad.run.task import Task
from sgrad.run.record import DivergenceError, Preempted, earlier_segments, run_record

log = logging.getLogger("sgrad")


def eval_every(cfg: Any, task: Task) -> int:
    """trainer.eval_every, or once per epoch of the training data; 0 (only at the end) for generated streams."""
    return cfg.trainer.eval_every or task.steps_per_epoch or 0


# Settings every run shows in TensorBoard's HParams tab, besides what its sweep varies: those of every run, then
# those of its kind of model (an FCN has no model.hidden, an LSTM no model.width).
HPARAMS = ("mode", "dataset.name", "model.name", "optim.lr", "sg.optim.lr", "sg.scale", "trainer.batch_size", "seed")
MODEL_HPARAMS = {"fcn": ("model.layers", "model.width"), "cnn": ("model.layers", "model.channels"),
                 "lstm": ("model.hidden", "trainer.bptt")}


def hparams_of(cfg: Any, swept: list[str]) -> dict:
    """{setting: value} for the HParams dashboard: the usual suspects for this model and the swept settings,
    typed."""
    flat = flat_config(cfg)
    keys = (*HPARAMS, *MODEL_HPARAMS.get(str(cfg.model.name), ()), *swept)
    return {k: flat[k] for k in dict.fromkeys(keys) if isinstance(flat.get(k), (bool, int, float, str))}


def _due(every: int, step: int) -> bool:
    return bool(every) and step % every == 0


def _last_logged(workdir: Path) -> dict:
    """The newest value of every metric in metrics.jsonl (a resumed run's summary starts from them)."""
    path = workdir / "metrics.jsonl"
    last: dict = {}
    if path.exists():
        for row in read_jsonl(path):
            last.update({k: float("nan") if v is None else v for k, v in row.items() if k != "step"})
    return last


def _agree(flag: int) -> int:
    """The largest flag over all processes (a stop on one process stops all, at the same step)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return int(np.max(multihost_utils.process_allgather(np.int32(flag))))


def _non_finite(values: dict[str, float]) -> list[str]:
    return [k for k, v in values.items() if not np.isfinite(v)]


def run(cfg: Any, workdir: str | Path, task: Task) -> dict:
    """Train `task` per `cfg` in `workdir`, resuming what is there; returns the summary (also summary.json)."""
    workdir = Path(workdir)
    lead = jax.process_index() == 0
    tcfg = cfg.trainer
    check_run_dir(cfg, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    total = task.total_steps
    every_eval = eval_every(cfg, task)
    every_probe = task.probe_every
    every_save = cfg.checkpoint.every

    state = task.init()
    checkpoints = Checkpoints(workdir / "checkpoints", cfg.checkpoint.keep)
    source = Checkpoints(find_checkpoint_dir(tcfg.resume), read_only=True) if tcfg.resume else checkpoints
    restored = source.restore_latest(task.checkpoint(state))
    if restored is None and tcfg.resume:
        raise ValueError(f"trainer.resume={tcfg.resume}: no readable checkpoint in {source.directory}")
    step = 0
    if restored is not None:
        step, saved = restored
        state = task.restore(saved)
        log.info("resuming from the checkpoint at step %d in %s", step, source.directory)
    if source is not checkpoints:
        source.close()
    # The newest good checkpoint this run can go back to: (step, folder), or None.
    kept = (step, source.directory) if restored is not None else None
    swept = swept_settings()
    # TensorBoard names a run by its folder: in a sweep, by what the sweep varies; alone, by experiment and mode.
    run_name = sweep_name(swept) or single_run_name(cfg)
    earlier: list[float] = []
    if lead:
        record_config(cfg, workdir)
        # Whatever was logged after the restored step is about to be recomputed.
        rewind(workdir, step, run_name)
        earlier = earlier_segments(workdir / "summary.json")
        (workdir / "summary.json").unlink(missing_ok=True)
    last = _last_logged(workdir) if lead else {}
    writer = MetricWriter(workdir, cfg.log.tensorboard, enabled=lead, run_name=run_name)
    if step == 0:
        writer.write_hparams(hparams_of(cfg, list(swept)), task.final_metrics, trial=run_name or workdir.name)
    log.info("%s: %d steps from step %d; run dir %s", task.name, total, step, workdir.absolute())
    bar = tqdm(total=total, initial=step, desc=task.name, unit="step", disable=not (tcfg.progress and lead),
               dynamic_ncols=True)
    t_mark = time.perf_counter()
    pending = None  # a dispatched chunk whose metrics are still on the device: (start, stop, metrics)
    pace = None  # seconds per step, from the last chunk that finished
    stop_at = step  # where a stop signal would end the run: the end of the last chunk dispatched
    finished = step  # the last step whose chunk has finished

    def where_it_stops() -> str:
        if pace is None:
            return f"the run will stop at step {stop_at} with a checkpoint, once the first chunk has compiled and run"
        left = max(0, stop_at - finished) * pace
        return f"the run will stop at step {stop_at} with a checkpoint, in about {left:.0f} s"

    def diverged(at_step: int, values: dict[str, float]) -> DivergenceError:
        detail = task.divergence_detail(state)
        where = (f"the last good checkpoint (step {kept[0]}) is in {kept[1]}" if kept is not None
                 else f"no checkpoint was saved before it (checkpoint.every={every_save})")
        return DivergenceError(f"run diverged at step {at_step}: non-finite {', '.join(_non_finite(values))}"
                               f"{'; ' + detail if detail else ''}. The logs are kept in {workdir}; {where}")

    def drain() -> None:
        """Pull a finished chunk's metrics to the host (after the next chunk was dispatched, when possible)."""
        nonlocal pending, t_mark, pace, finished
        start, stop, metrics = pending
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        out = task.chunk_metrics(metrics, start, stop, now - t_mark)
        pace, finished = (now - t_mark) / max(1, stop - start), stop
        t_mark, pending = now, None
        # The bar moves when a chunk's metrics arrive, so the loss it shows is that of the step it shows:
        # the postfix is set first, and update() draws both.
        bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in list(out.items())[:2]}, refresh=False)
        bar.set_description_str(task.name, refresh=False)
        bar.update(stop - start)
        record(stop, out)

    def record(at_step: int, values: dict[str, float]) -> None:
        """Log metrics, keep them for the summary, and stop on a non-finite one (after writing it, so the
        log shows the non-finite values too)."""
        writer.write(at_step, values)
        last.update(values)
        if _non_finite(values):
            raise diverged(at_step, values)

    def save() -> None:
        """A checkpoint of where the run is now, after the logs up to it are on disk."""
        nonlocal kept
        writer.flush()
        checkpoints.save(step, task.checkpoint(state))
        kept = (step, checkpoints.directory)

    def fields() -> dict:
        out = {"step": step, **task.summary_fields(), **last}
        out["objective"] = task.objective(out)  # what a sweeper (e.g. Optuna) minimises
        return out

    closing = [bar, writer, checkpoints]
    if step < total:
        # The first chunk compiles before it runs: say so, instead of a bar that sits at 0 %.
        log.info("compiling the training step (the first chunk starts when it is done)")
        bar.set_description_str(f"{task.name} (compiling)", refresh=True)
    with run_record(workdir, fields, closing, enabled=lead, earlier=earlier) as summary, StopRequest() as stop_request:
        stop_request.plan = where_it_stops if lead else None
        while step < total:
            if stop_request.received and jax.process_count() == 1:
                # The signal came after the last chunk's check, and was told this step: stop here, not a chunk
                # later (with several processes the stop waits for the next check, where they all agree).
                if pending is not None:
                    drain()
                if kept is None or kept[0] != step:
                    save()
                raise Preempted(stop_request.received, step, resume_command(workdir))
            # Chunk ends lie on a fixed grid of steps, so a resumed run logs exactly the same points.
            stop = min([total] + [(step // e + 1) * e for e in
                                  (tcfg.log_every, every_eval, every_probe, every_save) if e])
            stop_at = stop
            state, metrics = task.run_chunk(state, step, stop)
            if pending is not None:
                drain()
            pending, step = (step, stop, metrics), stop
            stopping = _agree(stop_request.received)
            saving = _due(every_save, step) or step == total or stopping
            evaluating = _due(every_eval, step) or step == total
            probing = _due(every_probe, step) or (every_probe and step == total)
            if task.synchronous or evaluating or probing or saving:
                drain()
            if probing:
                record(step, task.probe(state, step))
            if evaluating:
                values = task.evaluate(state, step)
                if values:
                    record(step, values)
                log.info("%s", task.eval_line(step, last, values))
            if saving:
                save()
            if pending is None:
                # Everything dispatched has finished: eval, probe and checkpoint time stay out of steps/s.
                t_mark = time.perf_counter()
            if stopping:
                raise Preempted(stopping, step, resume_command(workdir))
    final = ", ".join(f"{k} {summary[k]:.4g}" for k in task.final_metrics if isinstance(summary.get(k), float))
    log.info("done (%d steps): %s; wrote %s (metrics.jsonl, tb/, checkpoints/, summary.json)", step,
             final or "no final metrics", workdir.absolute())
    return summary
