"""scripts/bench.py still runs (speed itself is measured by the script, not asserted here)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import bench  # noqa: E402


def test_bench_measures_the_peer_preset_in_every_mode():
    for mode in ("backprop", "dni", "cdni"):
        cfg = bench.exp_cfg("bench_peer_mlp", mode)
        assert (cfg.model.layers, cfg.model.dni_every, cfg.sg.hidden_layers, cfg.sg.width) == (3, 2, 1, 256)
        row = bench.bench_one(cfg, chunk=3, chunks=1)
        assert row["mode"] == mode and row["batch"] == 64 and row["model"] == "fcn3"
        assert row["steps_per_sec"] > 0 and row["flops_per_sec"] > 0
