"""Image classification (FCN / CNN, every gradient mode and parallel layout) as a task of the run loop.

Data stays on the device; each chunk is one jitted loop that gathers its own
batches from index arrays, so the host only orchestrates. The step count is a
traced value, so the step compiles once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgrad.core.step import TrainState, eval_counts, probe
from sgrad.data import Dataset, load_dataset
from sgrad.devices import conv_library
from sgrad.devices.chunk import preprocess
from sgrad.devices.parallel import make_runner
from sgrad.run.build import build_decoupled, learning_rate
from sgrad.run.task import non_finite_parameters


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


def pad_eval(x: np.ndarray, y: np.ndarray, batch: int):
    """The test set as [N/batch, batch, ...] batches with a mask over the padding of the last one."""
    n = len(y)
    nb = -(-n // batch)
    pad = nb * batch - n
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    yp = np.concatenate([y, np.zeros((pad, *y.shape[1:]), y.dtype)]) if pad else y
    mask = np.arange(nb * batch) < n
    return (xp.reshape(nb, batch, *x.shape[1:]), yp.reshape(nb, batch, *y.shape[1:]), mask.reshape(nb, batch))


class ClassificationTask:
    """A feed-forward network on an image dataset (`model=fcn|cnn`)."""

    synchronous = False
    final_metrics = ["test/error", "test/accuracy", "test/loss", "train/loss"]

    def __init__(self, cfg: Any, dataset: Dataset | None = None):
        tcfg = cfg.trainer
        self.cfg = cfg
        data = dataset or load_dataset(str(cfg.dataset.name), cfg.dataset.dir, cfg.dataset.download,
                                       cfg.dataset.num_classes, progress=tcfg.progress)
        self.data = data
        self.order = BatchOrder(len(data.train_y), tcfg.batch_size, cfg.seed)
        if self.order.steps_per_epoch == 0:
            raise ValueError(f"trainer.batch_size={tcfg.batch_size} exceeds the {len(data.train_y)} training examples")
        self.steps_per_epoch = self.order.steps_per_epoch
        self.total_steps = tcfg.epochs * self.steps_per_epoch if tcfg.epochs else tcfg.steps
        self.decoupled = build_decoupled(cfg, data.input_shape, data.num_classes, self.total_steps)
        self.net, self.rule = self.decoupled.network, self.decoupled.rule
        self.probe_every = cfg.log.grad_probe_every if self.rule.probe else 0
        self.name = f"{self.rule.name} {str(cfg.model.name)}"
        self._mean, self._std = jnp.asarray(data.mean), jnp.asarray(data.std)
        self._train = jax.device_put(data.train_x), jax.device_put(data.train_y)
        self._lr_at = learning_rate(cfg.optim, self.total_steps)
        self._test = [jax.device_put(a) for a in pad_eval(data.test_x, data.test_y, tcfg.eval_batch_size)]
        probe_x = jax.device_put(data.test_x[:tcfg.batch_size])
        probe_y = jax.device_put(data.test_y[:tcfg.batch_size])
        net, mean, std, settings = self.net, self._mean, self._std, self.decoupled.settings
        self._probe = conv_library.jit(lambda s: probe(net, s, preprocess(probe_x, mean, std), probe_y, settings))

        @conv_library.jit
        def evaluate(state: TrainState, xs, ys, masks):
            def body(acc, inp):
                x, y, m = inp
                c = eval_counts(net, state, preprocess(x, mean, std), y, m)
                return jax.tree.map(jnp.add, acc, c), None
            zero = {"loss": 0.0, "correct": 0.0, "count": 0.0}
            acc, _ = jax.lax.scan(body, jax.tree.map(jnp.float32, zero), (xs, ys, masks))
            return {"test/loss": acc["loss"] / acc["count"], "test/accuracy": acc["correct"] / acc["count"]}
        self._evaluate = evaluate

    def init(self) -> Any:
        tcfg = self.cfg.trainer
        x = preprocess(self._train[0][:tcfg.batch_size], self._mean, self._std)
        state = self.decoupled.init(jax.random.key(self.cfg.seed), x, self._train[1][:tcfg.batch_size])
        d = self.decoupled
        self.runner, state, self._view = make_runner(str(self.cfg.parallel), d.network, d.tx, state, d.settings,
                                                         self.data.input_shape, tcfg.batch_size, self._mean, self._std,
                                                         replicas=self.cfg.replicas, sg_share=self.cfg.sg_share,
                                                         per_device=self.cfg.modules_per_device,
                                                         first_share=self.cfg.first_share)
        return state

    def checkpoint(self, state):
        return state

    def restore(self, saved):
        return saved

    def chunk_data(self, start: int, stop: int):
        return (*self._train, self.order.chunk(start, stop - start, self.cfg.trainer.log_every))

    def chunk_metrics(self, device_metrics, start: int, stop: int, seconds: float) -> dict[str, float]:
        out = {("train/" + k if "/" not in k else k): float(v) for k, v in device_metrics.items()}
        out["train/error"] = 1.0 - out["train/accuracy"]
        out["train/lr"] = float(self._lr_at(stop))
        rate = (stop - start) / max(seconds, 1e-9)
        out["watch/perf/steps_per_sec"] = rate
        out["watch/perf/examples_per_sec"] = rate * self.cfg.trainer.batch_size
        return out

    def evaluate(self, state, step: int) -> dict[str, float]:
        ev = {k: float(v) for k, v in jax.device_get(self._evaluate(self._view(state), *self._test)).items()}
        ev["test/error"] = 1.0 - ev["test/accuracy"]
        ev["watch/epoch"] = step / self.steps_per_epoch
        return ev

    def probe(self, state, step: int) -> dict[str, float]:
        out = {k: float(v) for k, v in jax.device_get(self._probe(self._view(state))).items()}
        k = len(self.net.modules)
        return {name: v for name, v in out.items() if self.rule.probe_ready(name, step, k)}

    def eval_line(self, step: int, train: dict, ev: dict) -> str:
        return (f"step {step} epoch {ev['watch/epoch']:.2f}: train loss {train.get('train/loss', float('nan')):.4f} "
                f"acc {train.get('train/accuracy', float('nan')):.4f} | test loss {ev['test/loss']:.4f} "
                f"acc {ev['test/accuracy']:.4f}")

    def divergence_detail(self, state) -> str:
        params = self._view(state).params
        groups = (("modules", "module", 1), ("interface", f"{self.rule.interface_name} of interface", 1),
                  ("si", "synthetic input model of module", 2))
        return non_finite_parameters((f"{label} {i}", p) for group, label, first in groups
                                     for i, p in enumerate(params[group], start=first))

    def summary_fields(self) -> dict:
        cfg = self.cfg
        built = {"layers": cfg.model.layers} if str(cfg.model.name) != "custom" else \
            {"target": str(cfg.model._target_)}  # model.layers does not apply to your own modules
        return {"mode": self.rule.name, "dataset": self.data.name, "model": str(cfg.model.name), **built,
                "modules": len(self.net.modules), "loss": str(cfg.loss.name), "seed": cfg.seed}

    def objective(self, summary: dict) -> float:
        return float(summary.get("test/error", float("nan")))
