"""train_and_evaluate(cfg, workdir): the loop that runs compiled chunks of steps, evaluates and logs.

Data stays on the device; each chunk of up to `trainer.log_every` steps is one
jitted loop that gathers its own batches from index arrays, so the host only
orchestrates. The step count is a traced value, so the step compiles once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from sgrad.checkpoint import Checkpoints, find_checkpoint_dir
from sgrad.chunk import preprocess
from sgrad.config import validate
from sgrad.data import Dataset, load_dataset
from sgrad.metrics import MetricWriter, read_jsonl, rewind
from sgrad.network import build_network, init_variables
from sgrad.optim import build_train_optimizer, learning_rate
from sgrad.parallel import make_runner
from sgrad.run_record import DivergenceError, Preempted, run_record
from sgrad.step import TrainState, UpdateRule, create_state, eval_counts, probe

log = logging.getLogger("sgrad")


def _value(v) -> str:
    return str(getattr(v, "value", v))


class BatchOrder:
    """Which examples each step sees: a fresh permutation per epoch, a pure function of (seed, step)."""

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        self.n, self.b, self.seed = num_examples, batch_size, seed
        self.steps_per_epoch = num_examples // batch_size
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    def chunk(self, start: int, count: int, length: int) -> np.ndarray:
        """Indices [length, B] for steps start..start+count-1; rows past `count` are unused padding."""
        idx = np.zeros((length, self.b), np.int32)
        for j in range(count):
            epoch, pos = divmod(start + j, self.steps_per_epoch)
            idx[j] = self._permutation(epoch)[pos * self.b:(pos + 1) * self.b]
        return idx


class _SignalFlag:
    """Within the block, SIGTERM/SIGINT only set a flag, so the loop can checkpoint before it exits."""

    def __init__(self):
        self.received = 0
        self._previous = {}

    def _handle(self, signum, frame):
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _divergence_message(step: int, metrics: dict[str, float], state: TrainState) -> str:
    bad = [k for k, v in metrics.items() if not np.isfinite(v)]
    parts = []
    for group, label, first in (("modules", "module", 1), ("sg", "SG model of interface", 1),
                                ("si", "synthetic input model of module", 2)):
        for i, p in enumerate(state.params[group], start=first):
            if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(p)):
                parts.append(f"{label} {i}")
    where = f"; non-finite parameters in {', '.join(parts)}" if parts else ""
    return (f"run diverged at step {step}: non-finite {', '.join(bad)}{where}. "
            "The last good checkpoint and the logs are kept in the run dir")


def _last_logged(workdir: Path) -> tuple[dict, dict]:
    """The newest train and test records of a run dir's metrics.jsonl (for a resumed run's summary)."""
    path = workdir / "metrics.jsonl"
    train, test = {}, {}
    if path.exists():
        for row in read_jsonl(path):
            if "train/loss" in row:
                train = {k: v for k, v in row.items() if k != "step"}
            if "test/accuracy" in row:
                test = {k: v for k, v in row.items() if k != "step"}
    return train, test


def _pad_eval(x: np.ndarray, y: np.ndarray, batch: int):
    n = len(y)
    nb = -(-n // batch)
    pad = nb * batch - n
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    yp = np.concatenate([y, np.zeros((pad,), y.dtype)]) if pad else y
    mask = np.arange(nb * batch) < n
    return (xp.reshape(nb, batch, *x.shape[1:]), yp.reshape(nb, batch), mask.reshape(nb, batch))


def train_and_evaluate(cfg: Any, workdir: str | Path, dataset: Dataset | None = None) -> dict:
    """Train per `cfg`, writing metrics.jsonl, TensorBoard events and summary.json into `workdir`."""
    validate(cfg)
    workdir = Path(workdir)
    tcfg = cfg.trainer
    mode = _value(cfg.mode)
    data = dataset or load_dataset(_value(cfg.dataset.name), cfg.dataset.dir, cfg.dataset.download,
                                   cfg.dataset.num_classes, progress=tcfg.progress)
    order = BatchOrder(len(data.train_y), tcfg.batch_size, cfg.seed)
    if order.steps_per_epoch == 0:
        raise ValueError(f"trainer.batch_size={tcfg.batch_size} exceeds the {len(data.train_y)} training examples")
    total = tcfg.epochs * order.steps_per_epoch if tcfg.epochs else tcfg.steps
    eval_every = tcfg.eval_every or order.steps_per_epoch
    probe_every = cfg.log.grad_probe_every if mode != "backprop" else 0

    net = build_network(cfg, data.input_shape, data.num_classes)
    mean, std = jnp.asarray(data.mean), jnp.asarray(data.std)
    train_x, train_y = jax.device_put(data.train_x), jax.device_put(data.train_y)
    key = jax.random.key(cfg.seed)
    params, stats = init_variables(net, key, preprocess(train_x[:tcfg.batch_size], mean, std))
    tx = build_train_optimizer(cfg, total)
    state = create_state(params, stats, tx)
    run_chunk, state, view = make_runner(_value(cfg.parallel), net, tx, state, mode, UpdateRule.from_config(cfg),
                                         data.input_shape, tcfg.batch_size, mean, std)

    test = [jax.device_put(a) for a in _pad_eval(data.test_x, data.test_y, tcfg.eval_batch_size)]

    @jax.jit
    def evaluate(state: TrainState, xs, ys, masks):
        def body(acc, inp):
            x, y, m = inp
            c = eval_counts(net, state, preprocess(x, mean, std), y, m)
            return jax.tree.map(jnp.add, acc, c), None
        zero = {"loss": 0.0, "correct": 0.0, "count": 0.0}
        acc, _ = jax.lax.scan(body, jax.tree.map(jnp.float32, zero), (xs, ys, masks))
        return {"test/loss": acc["loss"] / acc["count"], "test/accuracy": acc["correct"] / acc["count"]}

    probe_x = jax.device_put(data.test_x[:tcfg.batch_size])
    probe_y = jax.device_put(data.test_y[:tcfg.batch_size])
    run_probe = jax.jit(lambda s: probe(net, s, preprocess(probe_x, mean, std), probe_y))
    lr_at = learning_rate(cfg.optim, total)

    checkpoints = Checkpoints(workdir / "checkpoints", cfg.checkpoint.keep)
    source = Checkpoints(find_checkpoint_dir(tcfg.resume), read_only=True) if tcfg.resume else checkpoints
    restored = source.restore_latest(state)
    if restored is None and tcfg.resume:
        raise ValueError(f"trainer.resume={tcfg.resume}: no readable checkpoint in {source.directory}")
    step = 0
    if restored is not None:
        step, state = restored
        log.info("resuming from the checkpoint at step %d in %s", step, source.directory)
    # Whatever was logged after the restored step is about to be recomputed.
    rewind(workdir, step)
    last_train, last_test = _last_logged(workdir)
    (workdir / "summary.json").unlink(missing_ok=True)
    writer = MetricWriter(workdir, cfg.log.tensorboard)
    log.info("mode=%s model=%s layers=%d dataset=%s (%s): %d steps, %d per epoch, %d modules, run dir %s",
             mode, _value(cfg.model.name), cfg.model.layers, data.name, data.source, total,
             order.steps_per_epoch, len(net.modules), workdir)
    bar = tqdm(total=total, initial=step, desc=f"{mode}", unit="step", disable=not tcfg.progress,
               dynamic_ncols=True)
    # A compiled chunk's metrics are pulled after the next chunk is dispatched; a synchronous (host-stepped)
    # chunk has finished when run_chunk returns, so its metrics are pulled at once.
    synchronous = getattr(run_chunk, "synchronous", False)
    t_mark, step_mark = time.perf_counter(), step
    pending = None
    signals = _SignalFlag()

    def check(at_step: int, values: dict[str, float]) -> None:
        if not all(np.isfinite(v) for v in values.values()):
            raise DivergenceError(_divergence_message(at_step, values, view(state)))

    def drain(pending):
        """Pull a finished chunk's metrics to the host, after the next chunk was already dispatched."""
        nonlocal t_mark, step_mark
        end_step, means = pending
        host = {k: float(v) for k, v in jax.device_get(means).items()}
        now = time.perf_counter()
        rate = (end_step - step_mark) / max(now - t_mark, 1e-9)
        t_mark, step_mark = now, end_step
        out = {("train/" + k if "/" not in k else k): v for k, v in host.items()}
        out["train/error"] = 1.0 - out["train/accuracy"]
        out["train/lr"] = float(lr_at(end_step))
        out["perf/steps_per_sec"] = rate
        out["perf/examples_per_sec"] = rate * tcfg.batch_size
        writer.write(end_step, out)
        check(end_step, host)  # after writing: the log shows the non-finite values too
        bar.set_postfix(loss=f"{out['train/loss']:.4f}", acc=f"{out['train/accuracy']:.3f}", refresh=False)
        return out

    def due(every: int, at_step: int) -> bool:
        return bool(every) and at_step % every == 0

    def fields() -> dict:
        return {"step": step, "mode": mode, "dataset": data.name, "model": _value(cfg.model.name),
                "layers": cfg.model.layers, "seed": cfg.seed, **last_train, **last_test}

    with run_record(workdir, fields, [bar, writer, checkpoints]) as summary:
        with signals:
            while step < total:
                # Chunk ends lie on a fixed grid of steps, so a resumed run logs exactly the same points.
                stop = min([total] + [(step // e + 1) * e for e in
                                      (tcfg.log_every, eval_every, probe_every, cfg.checkpoint.every) if e])
                idx = order.chunk(step, stop - step, tcfg.log_every)
                state, means = run_chunk(state, train_x, train_y, idx, np.int32(stop - step))
                if pending is not None:
                    last_train = drain(pending)
                bar.update(stop - step)
                pending, step = (stop, means), stop
                saving = due(cfg.checkpoint.every, step) or step == total or signals.received
                if synchronous or due(eval_every, step) or due(probe_every, step) or step == total or saving:
                    last_train = drain(pending)
                    pending = None
                if due(probe_every, step) or (probe_every and step == total):
                    p = {k: float(v) for k, v in jax.device_get(run_probe(view(state))).items()}
                    writer.write(step, p)
                    check(step, p)
                if due(eval_every, step) or step == total:
                    ev = {k: float(v) for k, v in jax.device_get(evaluate(view(state), *test)).items()}
                    ev["test/error"] = 1.0 - ev["test/accuracy"]
                    ev["epoch"] = step / order.steps_per_epoch
                    writer.write(step, ev)
                    check(step, ev)
                    last_test = ev
                    log.info("step %d epoch %.2f: train loss %.4f acc %.4f | test loss %.4f acc %.4f",
                             step, ev["epoch"], last_train.get("train/loss", float("nan")),
                             last_train.get("train/accuracy", float("nan")), ev["test/loss"], ev["test/accuracy"])
                if saving:
                    writer.flush()
                    checkpoints.save(step, state)
                if pending is None:
                    # Everything dispatched has finished: eval, probe and checkpoint time stay out of steps/s.
                    t_mark, step_mark = time.perf_counter(), step
                if signals.received:
                    raise Preempted(signals.received, step)
    return summary
