"""Metric files: TensorBoard's own reader accepts ours, and metrics.jsonl holds the same numbers."""

import math

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sgrad.run.metrics import MetricWriter, read_jsonl


def test_event_files_are_readable_by_tensorboard(tmp_path):
    with MetricWriter(tmp_path) as w:
        for step in (10, 20, 30):
            w.write(step, {"train/loss": 1.0 / step, "sg/cosine/1": 0.5})
        w.write(30, {"test/accuracy": 0.9})
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"train/loss", "sg/cosine/1", "test/accuracy"}
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [10, 20, 30]
    assert math.isclose(loss[1].value, 0.05, rel_tol=1e-6)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows[0] == {"step": 10, "train/loss": 0.1, "sg/cosine/1": 0.5}
    assert rows[-1] == {"step": 30, "test/accuracy": 0.9}


def test_non_finite_values_stay_valid_json(tmp_path):
    with MetricWriter(tmp_path, tensorboard=False) as w:
        w.write(1, {"train/loss": float("nan")})
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "train/loss": None}]
    assert not (tmp_path / "tb").exists()
