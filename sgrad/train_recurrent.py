"""train_recurrent(cfg, workdir): the loop for model=lstm on copy, repeat_copy and ptb_char.

Each chunk of `trainer.log_every` windows is generated on the host (a pure
function of seed, step and curriculum level), run as one compiled loop, and
logged; the curriculum moves between chunks, so shapes never change.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from sgrad.checkpoint import Checkpoints
from sgrad.chunk import summed_loop
from sgrad.config import validate
from sgrad.data.text import TextStream, load_char_corpus
from sgrad.metrics import MetricWriter, rewind
from sgrad.models.lstm import LSTMCore
from sgrad.optim import build_train_optimizer
from sgrad.recurrent import (LN2, RecurrentNet, RecurrentState, future_gradient_probe, init_recurrent,
                             make_recurrent_step, window)
from sgrad.synthetic import DenseSynthetic
from sgrad.run_record import DivergenceError, run_record
from sgrad.tasks.copy import CopyTask

log = logging.getLogger("sgrad")
PROBE_WINDOWS = 8


def _value(v) -> str:
    return str(getattr(v, "value", v))


def build_task(cfg, text: dict | None = None):
    """The stream of windows for `dataset.name`: a CopyTask curriculum or a character corpus."""
    name, t = _value(cfg.dataset.name), cfg.trainer
    if name in ("copy", "repeat_copy"):
        d = cfg.dataset
        return CopyTask(name, d.bits, t.batch_size, t.bptt, cfg.seed, d.start_length, d.curriculum_threshold,
                        d.max_repeats)
    d = cfg.dataset
    corpus = text or load_char_corpus(d.dir, d.download, d.checksum, d.url, progress=cfg.trainer.progress)
    return TextStream(corpus, t.batch_size, t.bptt)


def build_recurrent_net(cfg, output_dim: int, loss: str) -> RecurrentNet:
    mode = _value(cfg.mode)
    dni = mode != "backprop"
    core = LSTMCore(cfg.model.hidden, output_dim, aux=dni and cfg.sg.aux)
    # The state's SG model has no batch norm: one boundary per step gives a small, correlated batch.
    sg = DenseSynthetic(cfg.sg.hidden_layers, cfg.sg.width, batch_norm=False) if dni else None
    return RecurrentNet(core, sg, loss, cfg.sg.discount, cfg.sg.aux_weight, conditioned=mode == "cdni")


def train_recurrent(cfg: Any, workdir: str | Path, text: dict | None = None) -> dict:
    """Train an LSTM with truncated BPTT (mode=backprop) or DNI at the window boundaries (mode=dni)."""
    if _value(cfg.dataset.name) == "two_timescale":
        return train_two_timescale(cfg, workdir)
    validate(cfg)
    workdir = Path(workdir)
    t = cfg.trainer
    task = build_task(cfg, text)
    copy = isinstance(task, CopyTask)
    net = build_recurrent_net(cfg, task.output_dim, "bits" if copy else "softmax")
    total = t.steps
    tx = build_train_optimizer(cfg, total)
    state = init_recurrent(net, jax.random.key(cfg.seed), t.batch_size, task.input_dim, tx, t.bptt)
    step_fn = make_recurrent_step(net, tx)

    @partial(jax.jit, donate_argnums=0)
    def run_chunk(state: RecurrentState, x, y, mask, resets, n):
        """Windows 0..n-1 of a chunk generated one window long, so every window sees the one after it."""
        return summed_loop(step_fn, state, n,
                           lambda i: (x[i], y[i], mask[i], resets[i], (y[i + 1], mask[i + 1], resets[i + 1])))

    @jax.jit
    def probe(params, x, y, mask, resets):
        return future_gradient_probe(net, params, x, y, mask, resets, t.bptt)

    @jax.jit
    def evaluate_stream(params, x, y, mask, resets):
        """Summed nats and units over consecutive windows [W, B, T, ...], the state carried (no updates)."""
        def body(s, inp):
            (_, _, s), sums = window(net, params["core"], s, *inp)
            return s, (sums["nats"], sums["units"])
        s0 = jnp.zeros((x.shape[1], 2 * net.core.hidden))
        _, (nats, units) = jax.lax.scan(body, s0, (x, y, mask, resets))
        return nats.sum(), units.sum()

    checkpoints = Checkpoints(workdir / "checkpoints", cfg.checkpoint.keep)
    level = np.zeros((2,), np.int64)  # curriculum level and longest length solved travel in the checkpoint
    restored = checkpoints.restore_latest({"state": state, "curriculum": level})
    step = 0
    if restored is not None:
        step, saved = restored
        state = saved["state"]
        if copy:
            task.level, task.solved = (int(v) for v in saved["curriculum"])
        log.info("resuming from the checkpoint at step %d", step)
    rewind(workdir, step)
    (workdir / "summary.json").unlink(missing_ok=True)
    writer = MetricWriter(workdir, cfg.log.tensorboard)
    bar = tqdm(total=total, initial=step, desc=f"{_value(cfg.mode)} T={t.bptt}", unit="step",
               disable=not t.progress, dynamic_ncols=True)
    last: dict = {}
    probe_every = cfg.log.grad_probe_every if net.sg_model is not None else 0
    def fields() -> dict:
        return {"step": step, "mode": _value(cfg.mode), "dataset": _value(cfg.dataset.name), "model": "lstm",
                "hidden": cfg.model.hidden, "bptt": t.bptt, "aux": bool(cfg.sg.aux), "seed": cfg.seed, **last,
                **({"max_length_solved": task.solved} if copy else {})}

    with run_record(workdir, fields, [bar, writer, checkpoints]) as summary:
        while step < total:
            n = min(t.log_every, total - step)
            chunk = task.chunk(step, t.log_every + 1)
            if copy:
                chunk.resets[-1, :, 0] = 1.0  # the next chunk starts fresh streams: nothing follows this one
            t0 = time.perf_counter()
            state, sums = run_chunk(state, chunk.x, chunk.y, chunk.mask, chunk.resets, np.int32(n))
            sums = {k: float(v) for k, v in jax.device_get(sums).items()}
            step += n
            bar.update(n)
            units = max(sums["units"], 1.0)
            out = {"train/loss": sums["nats"] / units, "train/bits_per_unit": sums["nats"] / units / LN2,
                   "train/error_rate": sums["wrong"] / units, "train/grad_norm": sums["grad_norm"] / n,
                   "perf/steps_per_sec": n / max(time.perf_counter() - t0, 1e-9)}
            if net.sg_model is not None:
                out["sg/loss"] = sums["sg_loss"] / (n * t.batch_size)
                out["sg/norm"] = sums["sg_norm"] / (n * t.batch_size)
                if "aux_loss" in sums:
                    out["sg/aux_loss"] = sums["aux_loss"] / (n * t.batch_size)
            if copy:
                out["train/error_per_bit"] = out["train/bits_per_unit"]
                task.observe(out["train/error_per_bit"])
                out["curriculum/length"] = task.level
                out["curriculum/solved"] = task.solved
            if not all(np.isfinite(v) for v in out.values()):
                writer.write(step, out)
                raise DivergenceError(f"run diverged at step {step}: non-finite "
                                      f"{', '.join(k for k, v in out.items() if not np.isfinite(v))}; the logs and "
                                      "the last good checkpoint are kept in the run dir")
            if probe_every and step % probe_every == 0 or (probe_every and step == total):
                p = task.chunk(step + 1_000_000_007, PROBE_WINDOWS)  # data no training step sees
                joined = [np.swapaxes(a, 0, 1).reshape(a.shape[1], -1, *a.shape[3:]) for a in
                          (p.x, p.y, p.mask, p.resets)]
                out.update({k: float(v) for k, v in jax.device_get(probe(state.params, *joined)).items()})
            if not copy and (step % (cfg.trainer.eval_every or total) == 0 or step == total):
                for split in ("valid", "test"):
                    ev = task.eval_windows(split)
                    nats, units = (float(v) for v in evaluate_stream(state.params, *ev))
                    out[f"{split}/bpc"] = nats / units / LN2
            writer.write(step, out)
            last = out
            bar.set_postfix(bits=f"{out['train/bits_per_unit']:.3f}",
                            **({"N": task.level} if copy else {}), refresh=False)
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 or step == total:
                writer.flush()
                checkpoints.save(step, {"state": state, "curriculum": np.array(
                    [getattr(task, "level", 0), getattr(task, "solved", 0)], np.int64)})
    return summary


def train_two_timescale(cfg: Any, workdir: str | Path) -> dict:
    """A every step, B every `trainer.bptt` steps on A's state; the DNI link is `mode=dni` (cut with sg.scale=0)."""
    from sgrad.two_timescale import TwoClockNet, init_two_clock, make_two_clock_step, stream

    validate(cfg)
    workdir = Path(workdir)
    t, bits, period = cfg.trainer, cfg.dataset.bits, cfg.trainer.bptt
    mode = _value(cfg.mode)
    net = TwoClockNet(LSTMCore(cfg.model.hidden, bits), LSTMCore(cfg.model.hidden, period * bits + 1),
                      DenseSynthetic(cfg.sg.hidden_layers, cfg.sg.width, batch_norm=False),
                      "backprop" if mode == "backprop" else "dni", cfg.sg.scale)
    tx = build_train_optimizer(cfg, t.steps)
    state = init_two_clock(net, jax.random.key(cfg.seed), t.batch_size, bits, tx)
    step_fn = make_two_clock_step(net, tx)

    @partial(jax.jit, donate_argnums=0)
    def run_chunk(state, x, y_a, y_b, n):
        return summed_loop(step_fn, state, n, lambda i: (x[i], y_a[i], y_b[i]))

    rewind(workdir, 0)
    writer = MetricWriter(workdir, cfg.log.tensorboard)
    bar = tqdm(total=t.steps, desc=f"two clocks {mode} scale={cfg.sg.scale}", unit="step", disable=not t.progress)
    step, last = 0, {}
    def fields() -> dict:
        return {"step": step, "mode": mode, "dataset": "two_timescale", "model": "lstm", "hidden": cfg.model.hidden,
                "bptt": period, "sg_scale": cfg.sg.scale, "seed": cfg.seed, **last}

    with run_record(workdir, fields, [bar, writer]) as summary:
        while step < t.steps:
            n = min(t.log_every, t.steps - step)
            x, y_a, y_b = stream(np.random.default_rng([cfg.seed, step]), t.batch_size, t.log_every, period, bits)
            state, sums = run_chunk(state, x, y_a, y_b, np.int32(n))
            step += n
            bar.update(n)
            out = {k: float(v) / n for k, v in jax.device_get(sums).items()}
            if not all(np.isfinite(v) for v in out.values()):
                writer.write(step, out)
                raise DivergenceError(f"run diverged at step {step}; the logs are kept in the run dir")
            writer.write(step, out)
            last = out
            bar.set_postfix(b_acc=f"{out['b/accuracy']:.3f}", refresh=False)
    return summary
