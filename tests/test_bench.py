"""The benchmark scripts still run (speed itself is measured by the scripts, not asserted here)."""

import json
import re
import sys
from pathlib import Path

import bench
from conftest import FAST_COMPILE
from bench_networks import exp_cfg
import pytest


@pytest.mark.slow
def test_bench_measures_the_peer_preset():
    for mode in ("backprop", "dni", "cdni", "dgl", "ddg"):
        cfg = exp_cfg("bench_peer_mlp", mode)
        assert (cfg.model.layers, cfg.model.dni_every, cfg.sg.hidden_layers, cfg.sg.width) == (3, 2, 1, 256)
    # One mode timed (every mode's row is bench_one's same code; the accelerator script's test times another).
    row = bench.bench_one(exp_cfg("bench_peer_mlp", "ddg"), "ddg", chunk=3, chunks=1)
    assert row["mode"] == "ddg" and row["batch"] == 64 and row["model"] == "fcn3"
    assert row["steps_per_sec"] > 0 and row["flops_per_sec"] > 0 and row["peak_mib"] > row["temp_mib"] > 0


@pytest.mark.slow
def test_bench_measures_the_transformer_preset_in_tokens_per_second():
    cfg = exp_cfg("text_transformer", "cdni")
    cfg.model.layers, cfg.model.width, cfg.model.context, cfg.trainer.batch_size = 2, 32, 16, 8
    row = bench.bench_one(cfg, "cdni", chunk=2, chunks=1)
    assert row["model"] == "transformer2" and row["tokens_per_sec"] == pytest.approx(16 * row["examples_per_sec"])
    assert row["flops_per_sec"] > 0 and row["temp_mib"] > 0


@pytest.mark.slow
def test_bench_measures_the_lstm_preset_in_windows_and_time_steps():
    cfg = exp_cfg("copy_dni", "dni")
    cfg.model.hidden, cfg.trainer.batch_size = 16, 4
    row = bench.bench_sequence(cfg, "dni", chunk=3, chunks=1)
    assert row["model"] == "lstm16" and row["batch"] == 4
    assert row["tokens_per_sec"] == pytest.approx(cfg.trainer.bptt * row["examples_per_sec"])
    assert row["flops_per_sec"] > 0 and row["peak_mib"] > 0


@pytest.mark.slow
def test_device_sweep_measures_every_parallel_mode(tmp_path):
    from conftest import run_on_cpu_devices
    # 4 devices: 4 modules (pipeline) and 2 modules x 2 replicas (pipeline), each row
    # after its own one-device baseline (timed beside it). Data rows and the parts: the accelerator script's test.
    out = run_on_cpu_devices("bench_device_rows", 4, 4, 2).stdout.strip().splitlines()[-1]
    assert out == str([("cdni", "none", 1, 4, 1), ("cdni", "pipeline", 4, 4, 1),
                       ("cdni", "none", 1, 2, 1), ("cdni", "pipeline", 4, 2, 2)])


def test_a_spec_gets_the_rows_its_mode_and_layout_allow():
    from bench_networks import paper_cfg
    from parallel_rows import row_plans
    plans = lambda spec, n=4, kinds=("none", "data", "pipeline"), replicas=2: row_plans(
        paper_cfg("fcn", 4, spec, 32, None), spec, n, kinds, replicas)
    assert plans("cdni") == [(4, "data", 4, 1), (4, "pipeline", 4, 1), (2, "pipeline", 4, 2)]
    # A spec that names its layout gets only that layout's rows, and sg_share no replicas row (it needs replicas=1).
    assert plans("dni:parallel=pipeline:sg_share=0.5:sg.hidden_layers=0") == [(4, "pipeline", 4, 1)]
    assert plans("ddg") == [(4, "pipeline", 4, 1)]  # its stash holds whole minibatches: no data row, locked: no replicas
    assert plans("cdni", kinds=("pipeline",), replicas=1) == [(4, "pipeline", 4, 1)]
    assert plans("cdni", n=1) == [(1, "none", 1, 1)]
    assert plans("cdni:parallel=pipeline:modules_per_device=2", n=2, replicas=1) == [(4, "pipeline", 2, 1)]


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
    # Each collective costs the latency: a DNI tick waits for two (K > 2), locked backprop for 2(K-1) in a row.
    q = sim.predict(tick, backprop, batch=6, micro=[2], cores=3, latency=0.5)
    assert q["DNI pipeline (unlocked)"] == 6 / (3.0 + 2 * 0.5)
    assert q["backprop (locked, model parallel)"] == 6 / (4.0 + 4 * 0.5)
    assert q["GPipe M=2"] == 6 / ((2 + 3 - 1) * (1.5 + 2 * 0.5))


def test_cost_model_reads_the_measured_latency_and_the_two_process_rows(tmp_path):
    import simulate_pipeline as sim
    profile = tmp_path / "profile.md"
    profile.write_text("... inside a compiled loop: **3.25 ms one way, 3.50 ms as a swap** (both ...\n")
    assert sim.read_latency(profile) == (0.00325, 0.0035)
    table = tmp_path / "processes.md"
    table.write_text("| mode | devices | layers per module | parallel | examples/s | × one device |\n|---|---|---|---|---|---|\n"
                     "| dni | 1 | 1+3 | none | 5000 | 1.00 |\n| dni | 2 | 1+3 | pipeline | 3272 | 0.65 |\n"
                     "| cdni | 2 | 1+3 | data | 2537 | 0.09 |\n")
    assert sim.read_processes(table) == {"dni": 3272.0}


def test_memory_is_xlas_analysis_of_the_compiled_program():
    import jax
    import jax.numpy as jnp
    from timing import memory
    a = jnp.ones((256, 256), jnp.float32)  # 0.25 MiB
    small = memory(jax.jit(lambda a: jnp.tanh(a @ a) @ a).lower(a).compile())
    # The argument and the result are held at the peak, the tanh(a @ a) between the two products is working memory.
    assert small["peak_mib"] >= 0.5 and small["temp_mib"] >= 0.25
    big = memory(jax.jit(lambda a: jnp.tanh(jnp.tile(a, (4, 1)) @ a) @ a).lower(a).compile())
    assert big["temp_mib"] >= 4 * small["temp_mib"] - 1e-9


def test_a_rows_mode_names_its_overrides():
    from bench_networks import spec_overrides
    assert spec_overrides("dni:sg.hidden_layers=0") == ["mode=dni", "sg.hidden_layers=0"]
    assert spec_overrides("cdni") == ["mode=cdni"]


def test_peak_steps_is_the_peak_over_the_flops_of_one_step():
    row = {"steps_per_sec": 100.0, "flops_per_sec": 2e9}  # 2e7 FLOPs per step
    assert bench.peak_steps(row, peak=1e10) == 500.0


@pytest.mark.slow
def test_accelerator_script_runs_each_of_its_steps(tmp_path):
    import os
    import subprocess
    # Two CPU devices stand in for two GPUs: the script measures what the machine shows it.
    env = {**os.environ, "SGRAD_BENCH_QUICK": "1", "SGRAD_BENCH_OUT": str(tmp_path), "JAX_PLATFORMS": "cpu",
           "SGRAD_BENCH_RUNS": str(tmp_path / "runs"),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {FAST_COMPILE}"}
    res = subprocess.run(["bash", str(Path(__file__).resolve().parent.parent / "scripts" / "bench_accelerator.sh")],
                         capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    table = (tmp_path / "accelerator_cpu.md").read_text()
    assert "| fcn3 | 16 | dni:sg.hidden_layers=0 |" in table  # the quick mode's one mode
    assert "peak" in table
    # bench_devices.py passes on its worker's rows: the parts each row was timed in (the cost model's inputs).
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    pipe = next(r for r in rows if r["parallel"] == "pipeline")
    data = next(r for r in rows if r["parallel"] == "data")
    assert len(pipe["stage_sec"]) == len(pipe["stage_alone_sec"]) == 2 and min(pipe["stage_sec"]) > 0, pipe
    assert len(data["shard_sec"]) == 2 and min(data["shard_sec"]) > 0 and data["allreduce_sec"] > 0, data
    devices = (tmp_path / "accelerator_cpu_devices.md").read_text()
    for mode, parallel in (("cdni", "data"), ("cdni", "pipeline")):  # a locked pipeline: the device sweep's
        assert f"| {mode} | 2 | 1+3 | {parallel} |" in devices or f"| {mode} | 2 | 2+2 | {parallel} |" in devices, \
            (mode, parallel, devices)
    reached = (tmp_path / "accelerator_cpu_time_to_accuracy.md").read_text()
    # One run in the quick mode (each costs a process start); the layouts are the same code path.
    assert re.search(r"\| backprop \| none \| 1 \| 1/1 \| \d+ \| [\d.]+ \|", reached), reached


@pytest.mark.slow
def test_pipeline_profile_writes_every_mode(tmp_path):
    import subprocess
    out = tmp_path / "profile.md"
    res = subprocess.run([sys.executable, str(Path(__file__).resolve().parent.parent / "scripts" / "profile_pipeline.py"),
                          "--modes", "cdni", "--batch", "16", "--chunk", "2", "--chunks", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    report = out.read_text()
    # The split follows each layer's measured cost, which a busy machine can move (1+3 or 2+2).
    assert "ms one way" in report and re.search(r"\| cdni \| \d\+\d \| 1 \|", report), report


@pytest.mark.slow
def test_pipeline_profile_times_an_auxiliary_classifier_too():
    # The profile test above runs cdni (an SG model); dgl's interface is a classifier head, and its last stage has
    # none (as every stage of ddg).
    import profile_pipeline
    parts = profile_pipeline.components("dgl", 4, 16)
    assert parts["stages"][0]["interface"] > 0 and parts["stages"][-1]["interface"] == 0, parts


def test_crossover_takes_each_point_as_the_median_of_its_runs():
    from crossover import combine
    point = lambda measured, split, predicted=1.0: {
        "width": 256, "batch": 64, "mode": "cdni", "parallel": "pipeline", "split": split, "t1_ms": 2.0,
        "measured": measured, "predicted": predicted, "without_wait": predicted, "wait_ms": 0.5,
        "collective_ms": 1.0, "part_ms": 1.0, "alone_ms": 1.0}
    (p,) = combine([[point(0.8, "1+3", 1.0)], [point(1.2, "2+2", 1.4)], [point(1.1, "1+3", None)]])
    assert p["measured"] == 1.1 and (p["lowest"], p["highest"]) == (0.8, 1.2)
    assert p["predicted"] == 1.2  # the median of the runs that predicted one
    assert p["split"] == "1+3/2+2"  # a profiled split that moved between runs says so
