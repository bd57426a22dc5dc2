"""Two networks on two clocks linked by a DNI (`+exp=two_timescale_dni`) as a task of the run loop."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from sgrad.devices.chunk import summed_chunk_runner
from sgrad.core.two_timescale import init_two_clock, make_two_clock_step, stream
from sgrad.run.build import build_train_optimizer, build_two_clock_net, update_settings
from sgrad.run.task import non_finite_parameters


class TwoClockTask:
    """A every step, B every `trainer.bptt` steps on A's state; `mode=dni` links them (cut with sg.scale=0)."""

    synchronous = False
    final_metrics = ["b/accuracy", "a/accuracy", "sg/cosine"]
    steps_per_epoch = None  # a generated stream: evaluated (its chunk metrics reported) at the end
    probe_every = 0

    def __init__(self, cfg: Any):
        t = cfg.trainer
        self.cfg = cfg
        self.mode_name = str(cfg.mode)
        self.net = build_two_clock_net(cfg)
        self.total_steps = t.steps
        self.name = f"two clocks {self.mode_name} scale={cfg.sg.scale}"
        self._tx = build_train_optimizer(cfg, t.steps)
        step_fn = make_two_clock_step(self.net, self._tx, update_settings(cfg))

        self.runner = summed_chunk_runner(step_fn, lambda x, y_a, y_b, i: (x[i], y_a[i], y_b[i]))

    def init(self):
        return init_two_clock(self.net, jax.random.key(self.cfg.seed), self.cfg.trainer.batch_size,
                              self.cfg.dataset.bits, self._tx)

    def checkpoint(self, state):
        return state

    def restore(self, saved):
        return saved

    def chunk_data(self, start: int, stop: int):
        t = self.cfg.trainer
        return jax.device_put(stream(np.random.default_rng([self.cfg.seed, start]), t.batch_size, t.log_every,
                                     t.bptt, self.cfg.dataset.bits))

    def chunk_metrics(self, sums, start: int, stop: int, seconds: float) -> dict[str, float]:
        n = stop - start
        return {**{k: float(v) / n for k, v in sums.items()}, "watch/perf/steps_per_sec": n / max(seconds, 1e-9)}

    def evaluate(self, state, step: int) -> dict[str, float]:
        return {}

    def probe(self, state, step: int) -> dict[str, float]:
        return {}

    def eval_line(self, step: int, train: dict, ev: dict) -> str:
        return (f"step {step}: A accuracy {train.get('a/accuracy', float('nan')):.4f}, "
                f"B accuracy {train.get('b/accuracy', float('nan')):.4f}, sg/cosine {train.get('sg/cosine', 0):.3f}")

    def divergence_detail(self, state) -> str:
        return non_finite_parameters(state.params.items())

    def summary_fields(self) -> dict:
        cfg = self.cfg
        return {"mode": self.mode_name, "dataset": "two_timescale", "model": "lstm", "hidden": cfg.model.hidden,
                "bptt": cfg.trainer.bptt, "sg_scale": cfg.sg.scale, "seed": cfg.seed}

    def objective(self, summary: dict) -> float:
        return -float(summary.get("b/accuracy", 0.0))
