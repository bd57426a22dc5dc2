"""Sequence tasks for `model=lstm` (Copy, Repeat Copy, character text, images read pixel by pixel) as a task of
the run loop.

Each chunk of windows is generated on the host (a pure function of seed, step
and curriculum level) and run as one compiled loop; the curriculum moves
between chunks, so shapes never change and a chunk's metrics are read before
the next chunk is built.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgrad.devices.chunk import summed_chunk_runner
from sgrad.data.text import TextStream, load_corpus
from sgrad.run.build import build_recurrent_net, build_train_optimizer, update_settings
from sgrad.core.recurrent import (LN2, RecurrentState, future_gradient_probe, init_recurrent,
                             make_recurrent_step, window)
from sgrad.config.schema import LSTM_IMAGE_DATASETS, require
from sgrad.data.copy import CopyTask
from sgrad.data.pixels import PixelStream
from sgrad.run.task import non_finite_parameters

PROBE_WINDOWS = 8
TRACE_GIB = 2  # largest eligibility trace sg.trace=accumulate may keep (it also needs about twice this to update)


def build_stream(cfg, text: dict | None = None):
    """The stream of windows for `dataset.name`: a CopyTask curriculum, images as pixel sequences, or a character
    corpus."""
    name, t, d = str(cfg.dataset.name), cfg.trainer, cfg.dataset
    if name in ("copy", "repeat_copy"):
        return CopyTask(name, d.bits, t.batch_size, t.bptt, cfg.seed, d.start_length, d.curriculum_threshold,
                        d.max_repeats)
    if name in LSTM_IMAGE_DATASETS:
        from sgrad.data.datasets import load_dataset
        images = load_dataset(name, d.dir, d.download, d.num_classes, t.progress)
        return PixelStream(images, t.batch_size, t.bptt, d.pixels_per_step, cfg.seed)
    corpus = text if text is not None else load_corpus(name, d.dir, d.download, d.checksum, d.url, d.valid_fraction,
                                                        d.test_fraction, t.progress)
    return TextStream(corpus, t.batch_size, t.bptt)


class SequenceTask:
    """An LSTM trained in windows of `trainer.bptt` steps: truncated BPTT, or DNI/cDNI at the boundaries."""

    synchronous = True  # the curriculum reads each chunk's error before the next chunk is generated

    def __init__(self, cfg: Any, text: dict | None = None):
        t = cfg.trainer
        self.cfg = cfg
        self.mode_name = str(cfg.mode)
        self.stream = build_stream(cfg, text)
        self.copy = isinstance(self.stream, CopyTask)
        self.images = isinstance(self.stream, PixelStream)
        self.net = build_recurrent_net(cfg, self.stream.output_dim, "bits" if self.copy else "softmax")
        self.total_steps = t.steps
        self.steps_per_epoch = None if self.copy else self.stream.windows_per_epoch
        self.probe_every = cfg.log.grad_probe_every if self.net.rule.diagnostic else 0
        self.final_metrics = (["curriculum/solved", "train/error_per_bit"] if self.copy
                              else ["test/accuracy", "train/error_rate", "sg/cosine"] if self.images
                              else ["valid/bpc", "test/bpc", "sg/cosine"])
        self.name = f"{self.mode_name} T={t.bptt}"
        self._tx = build_train_optimizer(cfg, t.steps)
        if self.net.trace == "accumulate":
            # BP(λ)'s trace is batch x 2·hidden x M's parameter count: quadratic in the state, so check it fits.
            trace = jax.eval_shape(self.init).trace
            gib = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(trace)) / 2 ** 30
            require(gib <= TRACE_GIB, "model.hidden", cfg.model.hidden,
                    f"small enough for sg.trace=accumulate's eligibility trace (trainer.batch_size x 2·hidden x the "
                    f"SG model's parameters: {gib:.2f} GiB here, at most {TRACE_GIB} GiB), e.g. model.hidden=32")
        net, step_fn = self.net, make_recurrent_step(self.net, self._tx, update_settings(cfg))

        # A chunk is generated longer than it trains on, so that every window sees the one after it, and with
        # sg.trace_lambda the trace_windows + 1 after it that M's λ-return target reads.
        self.lookahead = net.trace_windows + 1

        def batch_at(x, y, mask, resets, i):
            following = (y[i + 1], mask[i + 1], resets[i + 1])
            if not net.trace_windows:
                return x[i], y[i], mask[i], resets[i], following
            ahead = tuple(jax.lax.dynamic_slice_in_dim(a, i + 1, self.lookahead) for a in (x, y, mask, resets))
            return x[i], y[i], mask[i], resets[i], following, ahead

        self.step, self.batch_at = step_fn, batch_at  # step i of a chunk: step(state, *batch_at(*data, i))
        self.runner = summed_chunk_runner(step_fn, batch_at)

        @jax.jit
        def probe(params, s0, x, y, mask, resets):
            return future_gradient_probe(net, params, s0, x, y, mask, resets)

        @jax.jit
        def evaluate_stream(params, x, y, mask, resets):
            """Summed nats, units and wrong predictions over consecutive windows [W, B, T, ...], the state carried
            (no updates)."""
            def body(s, inp):
                (_, _, s), sums = window(net, params["core"], s, *inp)
                return s, (sums["nats"], sums["units"], sums["wrong"])
            s0 = jnp.zeros((x.shape[1], 2 * net.core.hidden))
            _, sums = jax.lax.scan(body, s0, (x, y, mask, resets))
            return tuple(a.sum() for a in sums)

        self._probe, self._evaluate = probe, evaluate_stream

    def init(self) -> RecurrentState:
        t = self.cfg.trainer
        return init_recurrent(self.net, jax.random.key(self.cfg.seed), t.batch_size, self.stream.input_dim,
                              self._tx, t.bptt)

    def checkpoint(self, state):
        # The curriculum level and the longest length solved travel with the state.
        progress = [getattr(self.stream, "level", 0), getattr(self.stream, "solved", 0)]
        return {"state": state, "curriculum": np.array(progress, np.int64)}

    def restore(self, saved):
        if self.copy:
            self.stream.level, self.stream.solved = (int(v) for v in saved["curriculum"])
        return saved["state"]

    def chunk_data(self, start: int, stop: int):
        every = self.cfg.trainer.log_every  # stops lie on the log_every grid
        chunk = self.stream.chunk(start, every + self.lookahead)
        if self.copy:
            chunk.resets[every:, :, 0] = 1.0  # the next chunk starts fresh streams: nothing follows this one
        return jax.device_put((chunk.x, chunk.y, chunk.mask, chunk.resets))

    def chunk_metrics(self, sums, start: int, stop: int, seconds: float) -> dict[str, float]:
        sums = {k: float(v) for k, v in sums.items()}
        n, batch = stop - start, self.cfg.trainer.batch_size
        units = max(sums["units"], 1.0)
        out = {"train/loss": sums["nats"] / units, "train/bits_per_unit": sums["nats"] / units / LN2,
               "train/error_rate": sums["wrong"] / units, "train/grad_norm": sums["grad_norm"] / n,
               "watch/perf/steps_per_sec": n / max(seconds, 1e-9)}
        if "sg_loss" in sums:
            out["sg/loss"] = sums["sg_loss"] / (n * batch)
            out["sg/norm"] = sums["sg_norm"] / (n * batch)
            if "aux_loss" in sums:
                out["sg/aux_loss"] = sums["aux_loss"] / (n * batch)
        if self.copy:
            out["train/error_per_bit"] = out["train/bits_per_unit"]
            self.stream.observe(out["train/error_per_bit"])
            out["curriculum/length"] = self.stream.level
            out["curriculum/solved"] = self.stream.solved
        return out

    def evaluate(self, state, step: int) -> dict[str, float]:
        if self.copy:
            return {}  # generated episodes: the chunk metrics are already unseen data
        if self.images:
            nats, units, wrong = (float(v) for v in self._evaluate(state.params, *self.stream.eval_windows()))
            return {"test/loss": nats / units, "test/accuracy": 1.0 - wrong / units}
        out = {}
        for split in ("valid", "test"):
            nats, units, _ = (float(v) for v in self._evaluate(state.params, *self.stream.eval_windows(split)))
            out[f"{split}/bpc"] = nats / units / LN2
        return out

    def probe_windows(self) -> int:
        """Windows in a probe stream. On episodes the probe's first half must hold the longest episode, so that
        every boundary it counts has its whole future; rounded up to PROBE_WINDOWS so that the curriculum's
        levels share a few compiled probes."""
        if not self.copy:
            return PROBE_WINDOWS
        needed = 2 * -(-self.stream.longest_episode // self.cfg.trainer.bptt)
        return PROBE_WINDOWS * -(-needed // PROBE_WINDOWS)

    def probe(self, state, step: int) -> dict[str, float]:
        # The stream's own continuation from the carried state (probed, never trained on here).
        p = self.stream.chunk(step, self.probe_windows())
        return {k: float(v) for k, v in jax.device_get(
            self._probe(state.params, state.carry, p.x, p.y, p.mask, p.resets)).items()}

    def eval_line(self, step: int, train: dict, ev: dict) -> str:
        line = (f"step {step}: train error {train.get('train/error_rate', float('nan')):.4f}" if self.images else
                f"step {step}: train bits/unit {train.get('train/bits_per_unit', float('nan')):.4f}")
        if self.copy:
            line += f", curriculum length {self.stream.level} (solved {self.stream.solved})"
        if "sg/cosine" in train:
            line += f", sg/cosine {train['sg/cosine']:.3f}"
        if ev and self.images:
            line += f" | test accuracy {ev['test/accuracy']:.4f}"
        elif ev:
            line += f" | valid bpc {ev['valid/bpc']:.4f} test bpc {ev['test/bpc']:.4f}"
        return line

    def divergence_detail(self, state) -> str:
        return non_finite_parameters((("the LSTM", state.params["core"]), ("the SG model", state.params["sg"])))

    def summary_fields(self) -> dict:
        cfg = self.cfg
        return {"mode": self.mode_name, "dataset": str(cfg.dataset.name), "model": "lstm",
                "hidden": cfg.model.hidden, "bptt": cfg.trainer.bptt, "aux": bool(cfg.sg.aux), "seed": cfg.seed,
                "trace_lambda": self.net.trace_lambda if self.net.trace_windows or self.net.trace == "accumulate" else 0.0,
                "sg_trace": self.net.trace,
                **({"max_length_solved": self.stream.solved} if self.copy else {}),
                **({"pixels_per_step": self.stream.per_step} if self.images else {})}

    def objective(self, summary: dict) -> float:
        if self.copy:
            return -float(summary.get("max_length_solved", 0))
        if self.images:
            return 1.0 - float(summary.get("test/accuracy", float("nan")))
        return float(summary.get("test/bpc", float("nan")))
