"""The one run loop: every experiment is a Task (sgrad/run/task.py) that this loop drives.

Everything a run does besides computing is written here and only here: the
run-config record and its check on rerun, resume (in place or from
`trainer.resume`), rewinding the logs, SIGTERM/SIGINT, divergence, checkpoints,
the chunk grid and the eval/probe cadence, progress, log lines and summary.json.
With several processes (`distributed=true`) only process 0 writes logs, metrics
and the summary; checkpoints are collective and a stop request is agreed on.
"""

from __future__ import annotations

import itertools
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
from sgrad.run.pacing import Pacer
from sgrad.run.rundir import (RECORD, check_run_dir, discard_stub, record_config, resume_command, single_run_name,
                              sweep_name, swept_settings)
from sgrad.run.signals import StopRequest
from sgrad.run.task import Task
from sgrad.run.record import DivergenceError, Preempted, earlier_segments, run_record

log = logging.getLogger("sgrad")


def eval_every(cfg: Any, task: Task) -> int:
    """trainer.eval_every, or once per epoch of the training data; 0 (only at the end) for generated streams."""
    return cfg.trainer.eval_every or task.steps_per_epoch or 0


# Settings every run shows in TensorBoard's HParams tab, besides what its sweep varies: those of every run, then
# those of its kind of model (an FCN has no model.hidden, an LSTM no model.width).
HPARAMS = ("mode", "dataset.name", "model.name", "loss.name", "optim.lr", "sg.optim.lr", "sg.scale", "trainer.batch_size", "seed")
MODEL_HPARAMS = {"fcn": ("model.layers", "model.width"), "cnn": ("model.layers", "model.channels"),
                 "lstm": ("model.hidden", "trainer.bptt")}


def hparams_of(cfg: Any, swept: list[str]) -> dict:
    """{setting: value} for the HParams dashboard: the usual suspects for this model and the swept settings,
    typed."""
    flat = flat_config(cfg)
    # Your own model is its factory and the arguments it was called with.
    custom = ("model._target_", *(k for k in flat if k.startswith("model.args."))) \
        if str(cfg.model.name) == "custom" else ()
    keys = (*HPARAMS, *MODEL_HPARAMS.get(str(cfg.model.name), ()), *custom, *swept)
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


_AGREED = itertools.count()  # _agree calls so far: every process makes the same calls, in the same order


def _agree(flag: int, steps: int) -> tuple[int, int]:
    """(the largest stop flag over all processes, process 0's step count): a stop on one process stops all, and
    every process dispatches the same steps, at the same step.

    Asked through jax.distributed's coordination service (its key-value store), not a collective on the devices:
    a collective would queue behind the dispatches already running and hold the host until they finish, so the
    device would sit idle while the host prepares the next one (every logged chunk paid for that).
    """
    if jax.process_count() == 1:
        return flag, steps
    try:  # JAX exposes the coordination service's client only here
        from jax._src.distributed import global_state
        client = global_state.client
    except (ImportError, AttributeError):
        client = None
    if client is None:  # processes joined some other way, or a JAX without it: agree on the devices
        from jax.experimental import multihost_utils
        both = np.asarray(multihost_utils.process_allgather(np.array([flag, steps], np.int32)))
        return int(both[:, 0].max()), int(both[0, 1])
    call, me = next(_AGREED), jax.process_index()
    client.key_value_set(f"sgrad/agree/{call}/{me}", f"{flag} {steps}")
    said = [client.blocking_key_value_get(f"sgrad/agree/{call}/{p}", 600_000).split()
            for p in range(jax.process_count())]
    if call >= 2:
        # Everyone has set its key of the call before this one, so everyone has read the one before that.
        client.key_value_delete(f"sgrad/agree/{call - 2}/{me}")
    return max(int(f) for f, _ in said), int(said[0][1])


def _host_copy(tree: Any) -> Any:
    """`tree` on the host, also where its arrays span the devices of several processes (a pipeline's sums: one
    row per device)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    # tiled: each global array whole, as one process would hold it (stacking is refused for arrays that span
    # processes, and would add a process axis to those that do not).
    return multihost_utils.process_allgather(tree, tiled=True)


def _grid(step: int, every: list[int], total: int) -> tuple[int, int]:
    """The logged chunk `step` lies in: (its first step, its end), the grid points around it. Chunk ends lie on
    a fixed grid of steps, so a resumed run logs exactly the same points."""
    return (max([0] + [(step // e) * e for e in every]),
            min([total] + [(step // e + 1) * e for e in every]))


def _non_finite(values: dict[str, float]) -> list[str]:
    return [k for k, v in values.items() if not np.isfinite(v)]


def run(cfg: Any, workdir: str | Path, task: Task) -> dict:
    """Train `task` per `cfg` in `workdir`, resuming what is there; returns the summary (also summary.json)."""
    workdir = Path(workdir)
    lead = jax.process_index() == 0
    tcfg = cfg.trainer
    check_run_dir(cfg, workdir)
    fresh = not (workdir / RECORD).is_file()  # no earlier start used this run dir
    workdir.mkdir(parents=True, exist_ok=True)
    total = task.total_steps
    every_eval = eval_every(cfg, task)
    every_probe = task.probe_every
    every_save = cfg.checkpoint.every
    every = [e for e in (tcfg.log_every, every_eval, every_probe, every_save) if e]

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
    start_step = step
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
    last = _last_logged(workdir) if lead else {}
    writer = MetricWriter(workdir, cfg.log.tensorboard, enabled=lead, run_name=run_name)
    if step == 0:
        writer.write_hparams(hparams_of(cfg, list(swept)), task.final_metrics, trial=run_name or workdir.name)
    log.info("%s: %d steps from step %d; run dir %s", task.name, total, step, workdir.absolute())
    bar = tqdm(total=total, initial=step, desc=task.name, unit="step", disable=not (tcfg.progress and lead),
               dynamic_ncols=True)
    t_mark = time.perf_counter()
    # Seconds spent training so far (the first chunk's compilation included; evaluation, probes and checkpoints
    # not), carried across resumes: the x axis of a time-to-accuracy comparison (scripts/time_to_accuracy.py).
    trained = last.get("watch/perf/train_seconds", 0.0)
    pending = None  # a finished logged chunk whose metrics are still on the device: (first step, end, metrics)
    stop_at = step  # where a stop signal would end the run: the end of the last dispatch
    stop_request = StopRequest()

    def started() -> None:
        """The first dispatch has run: from now on a stop signal ends the run with a checkpoint."""
        with stop_request.lock:
            stop_request.early = None
        if lead:
            # The earlier segment's summary no longer describes the run dir.
            (workdir / "summary.json").unlink(missing_ok=True)

    pacer = Pacer(on_first_finish=started)
    told_pace = False  # the pace is logged once it is known: a slow network's first log point may be minutes away

    def where_it_stops() -> str:
        left = pacer.seconds_to(stop_at)
        when = "when the step under way ends" if left is None else f"in about {left:.0f} s"
        return f"the run will stop at step {stop_at} with a checkpoint, {when}"

    def give_up(signum: int) -> str:
        """What a stop signal before the first dispatch has run leaves: the run dir as this start found it, or none."""
        rerun = resume_command(workdir)
        if start_step > 0:
            return f"nothing was trained since the checkpoint at step {start_step}. Resume with: {rerun}"
        if fresh:
            import shutil
            for p in workdir.iterdir():  # what this start wrote; Hydra's own files go with the stub
                if p.name != ".hydra" and p.suffix != ".log":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            discard_stub(workdir)
        said = "nothing was trained" + ("" if workdir.exists() else ", no run dir was left")
        # The other jobs of a sweep run in this process too: say how the sweep goes on.
        return said + (f". Resume the sweep with: {rerun}" if swept_settings() else "")

    def diverged(at_step: int, values: dict[str, float]) -> DivergenceError:
        detail = task.divergence_detail(state)
        where = (f"the last good checkpoint (step {kept[0]}) is in {kept[1]}" if kept is not None
                 else f"no checkpoint was saved before it (checkpoint.every={every_save})")
        return DivergenceError(f"run diverged at step {at_step}: non-finite {', '.join(_non_finite(values))}"
                               f"{'; ' + detail if detail else ''}. The logs are kept in {workdir}; {where}")

    def drain() -> None:
        """Pull a finished chunk's metrics to the host (after the next dispatch was issued, when possible)."""
        nonlocal pending, t_mark, trained
        first, end, metrics = pending
        pacer.wait(up_to=end)
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        out = task.chunk_metrics(metrics, first, end, now - t_mark)
        trained += now - t_mark
        out["watch/perf/train_seconds"] = trained
        t_mark, pending = now, None
        # The bar moves when a chunk's metrics arrive, so the loss it shows is that of the step it shows:
        # the postfix is set first, and update() draws both.
        bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in list(out.items())[:2]}, refresh=False)
        bar.set_description_str(task.name, refresh=False)
        bar.update(end - bar.n)
        record(end, out)

    def record(at_step: int, values: dict[str, float]) -> None:
        """Log metrics, keep them for the summary, and stop on a non-finite one (after writing it, so the
        log shows the non-finite values too)."""
        writer.write(at_step, values)
        last.update(values)
        if _non_finite(values):
            raise diverged(at_step, values)

    def save(chunk_sums: tuple[int, Any] | None = None) -> None:
        """A checkpoint of where the run is now, after the logs up to it are on disk; `chunk_sums`: (first step,
        running sums on the device) of the logged chunk it lies inside."""
        nonlocal kept
        writer.flush()
        if chunk_sums is not None:
            chunk_sums = (chunk_sums[0], _host_copy(chunk_sums[1]))
        checkpoints.save(step, task.checkpoint(state), chunk_sums)
        kept = (step, checkpoints.directory)

    def fields() -> dict:
        out = {"step": step, **task.summary_fields(), **last}
        out["objective"] = task.objective(out)  # what a sweeper (e.g. Optuna) minimises
        return out

    closing = [bar, writer, checkpoints]
    # The stop signals stay with the loop until the run record is closed: a SIGTERM that lands while the summary of
    # a finished run is written is a stop request with nothing left to stop, not an interruption of the writing.
    with stop_request, run_record(workdir, fields, closing, enabled=lead, earlier=earlier) as summary:
        stop_request.plan = where_it_stops if lead else None
        stop_request.early = give_up if step < total else None
        if step < total:
            # The first chunk compiles before it runs: say so, instead of a bar that sits at 0 %.
            log.info("compiling the training step (the first chunk starts when it is done)")
            bar.set_description_str(f"{task.name} (compiling)", refresh=True)
        while step < total:
            begin, end = _grid(step, every, total)
            data = task.chunk_data(begin, end)
            sums = task.runner.zeros(state, *data)
            first = step  # the first step `sums` covers
            if step == start_step and step > begin and restored is not None:
                # Stopped inside this chunk: its sums so far were kept with the checkpoint.
                partial = source.chunk_sums(step, sums)
                if partial is not None:
                    first, sums = partial
            while step < end:
                # A logged chunk runs as dispatches of a few seconds each; before each, a stop signal is honoured.
                pacer.make_room()
                if pacer.pace is not None and not told_pace:
                    told_pace = True
                    log.info("training: %.3g s per step; the chunk up to step %d ends in about %.0f s", pacer.pace,
                             end, (end - step) * pacer.pace)
                n = pacer.steps(end - step)
                with stop_request.lock:
                    stopping = stop_request.received
                    if stopping:
                        stop_request.exit_if_early(stopping)  # nothing trained yet: no checkpoint to write
                    stop_at = step if stopping else step + n
                stopping, n = _agree(stopping, n)
                if stopping:
                    pacer.wait()
                    if pending is not None:
                        drain()
                    if kept is None or kept[0] != step:
                        save((first, sums) if step > begin else None)
                    raise Preempted(stopping, step, resume_command(workdir))
                stop_at = step + n
                state, sums, metrics = task.runner.program(state, sums, *data, np.int32(step - begin), np.int32(n),
                                                           np.bool_(step + n == end), np.int32(end - first))
                pacer.dispatched(step + n, n, sums)
                step += n
                if pending is not None:
                    drain()  # the last chunk's metrics, now that the device has the next steps to run
            pending = (first, end, metrics)
            saving = _due(every_save, step) or step == total
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
    final = ", ".join(f"{k} {summary[k]:.4g}" for k in task.final_metrics if isinstance(summary.get(k), float))
    log.info("done (%d steps): %s; wrote %s (metrics.jsonl, tb/, checkpoints/, summary.json)", step,
             final or "no final metrics", workdir.absolute())
    return summary
