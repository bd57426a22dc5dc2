"""scripts/bench.py still runs (speed itself is measured by the script, not asserted here)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import bench  # noqa: E402


@pytest.mark.slow
def test_bench_measures_the_peer_preset_in_every_mode():
    for mode in ("backprop", "dni", "cdni", "dgl", "ddg"):
        cfg = bench.exp_cfg("bench_peer_mlp", mode)
        assert (cfg.model.layers, cfg.model.dni_every, cfg.sg.hidden_layers, cfg.sg.width) == (3, 2, 1, 256)
        row = bench.bench_one(cfg, chunk=3, chunks=1)
        assert row["mode"] == mode and row["batch"] == 64 and row["model"] == "fcn3"
        assert row["steps_per_sec"] > 0 and row["flops_per_sec"] > 0


@pytest.mark.slow
def test_device_sweep_measures_every_parallel_mode(tmp_path):
    from conftest import run_on_cpu_devices
    out = run_on_cpu_devices("bench_device_rows", 2).stdout.strip().splitlines()[-1]
    assert out == str([("backprop", "none", 1, 2), ("backprop", "data", 2, 2), ("cdni", "none", 1, 2),
                       ("cdni", "data", 2, 2), ("cdni", "pipeline", 2, 2), ("dgl", "none", 1, 2),
                       ("dgl", "data", 2, 2), ("dgl", "pipeline", 2, 2), ("ddg", "none", 1, 2),
                       ("ddg", "pipeline", 2, 2)])


def test_pipeline_cost_model_formulas():
    import simulate_pipeline as sim
    tick = [3.0, 1.0, 2.0]
    backprop = {6: [2.0, 1.0, 1.0], 3: [1.5, 0.5, 0.5]}
    p = sim.predict(tick, backprop, batch=6, micro=[2], cores=3)
    assert p["DNI pipeline (unlocked)"] == 6 / 3.0            # the slowest stage bounds the pipeline
    assert p["DNI, all modules on one device"] == 6 / 6.0
    assert p["backprop (locked, model parallel)"] == 6 / 4.0  # one module busy at a time
    assert p["GPipe M=2"] == 6 / ((2 + 3 - 1) * 1.5)          # bubble: M + K - 1 micro-steps
    assert sim.predict(tick, backprop, 6, [], cores=1)["DNI pipeline (unlocked)"] == 6 / 6.0  # one core: serial


def test_peak_steps_is_the_peak_over_the_flops_of_one_step():
    row = {"steps_per_sec": 100.0, "flops_per_sec": 2e9}  # 2e7 FLOPs per step
    assert bench.peak_steps(row, peak=1e10) == 500.0
