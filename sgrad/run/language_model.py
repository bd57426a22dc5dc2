"""Character-level language modelling with a feed-forward network over whole windows (`model=transformer`).

Each example is a window of `model.context` characters with the next character as the target at every position,
so the classification machinery (every mode, the pipeline, data parallelism) trains it unchanged; this task adds
the text's splits and reports bits per character on valid and test, as the LSTM presets do.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from sgrad.data import Dataset
from sgrad.data.text import load_corpus, token_windows
from sgrad.run.classification import ClassificationTask, pad_eval


class LanguageModelTask(ClassificationTask):
    """Next-character prediction on `dataset=text|ptb_char`, one window of `model.context` per example."""

    final_metrics = ["valid/bpc", "test/bpc", "train/bpc"]

    def __init__(self, cfg: Any, text: dict | None = None):
        d, window = cfg.dataset, cfg.model.context
        corpus = text if text is not None else load_corpus(str(d.name), d.dir, d.download, d.checksum, d.url,
                                                            d.valid_fraction, d.test_fraction, cfg.trainer.progress)
        vocab = len(corpus["vocab"])
        train, valid, test = (token_windows(corpus[s], window) for s in ("train", "valid", "test"))
        # Tokens need no standardisation: mean and std are given so none is computed over ids.
        data = Dataset(str(d.name), *train, *valid, vocab, str(d.dir), np.zeros(1, np.float32),
                       np.ones(1, np.float32))
        super().__init__(cfg, data)
        self.vocab = vocab
        self._test_split = [jax.device_put(a) for a in pad_eval(*test, cfg.trainer.eval_batch_size)]
        self.name = f"{self.rule.name} transformer"

    def chunk_metrics(self, device_metrics, start: int, stop: int, seconds: float) -> dict[str, float]:
        out = super().chunk_metrics(device_metrics, start, stop, seconds)
        out["train/bpc"] = out["train/loss"] / math.log(2)
        out["watch/perf/tokens_per_sec"] = out.pop("watch/perf/examples_per_sec") * self.cfg.model.context
        return out

    def evaluate(self, state, step: int) -> dict[str, float]:
        out = {"watch/epoch": step / self.steps_per_epoch}
        view = self._view(state)
        for split, batches in (("valid", self._test), ("test", self._test_split)):
            ev = jax.device_get(self._evaluate(view, *batches))
            loss = float(ev["test/loss"])
            out.update({f"{split}/loss": loss, f"{split}/bpc": loss / math.log(2),
                        f"{split}/accuracy": float(ev["test/accuracy"])})
        return out

    def eval_line(self, step: int, train: dict, ev: dict) -> str:
        return (f"step {step} epoch {ev['watch/epoch']:.2f}: train bpc {train.get('train/bpc', float('nan')):.3f} | "
                f"valid bpc {ev['valid/bpc']:.3f} test bpc {ev['test/bpc']:.3f}")

    def summary_fields(self) -> dict:
        cfg = self.cfg
        return {"mode": self.rule.name, "dataset": self.data.name, "model": "transformer",
                "layers": cfg.model.layers, "width": cfg.model.width, "context": cfg.model.context,
                "modules": len(self.net.modules), "vocab": self.vocab, "seed": cfg.seed}

    def objective(self, summary: dict) -> float:
        return float(summary.get("valid/bpc", float("nan")))
