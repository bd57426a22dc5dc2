"""Multi-host through jax.distributed: two processes on this machine, one CPU device each, joined over
localhost with gloo collectives. The pipeline across processes equals the same schedule run sequentially
in one process, and data parallelism across processes equals the single-device step."""

import json
import os
import time
import socket
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import jax, jax.numpy as jnp, numpy as np
    from jax.experimental import multihost_utils
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize("localhost:{port}", num_processes=2, process_id=int(sys.argv[1]))
    assert jax.process_count() == 2 and jax.device_count() == 2 and jax.local_device_count() == 1

    from conftest import device_data, make_cfg
    from sgrad.devices.chunk import chunk_fn, make_chunk_runner, preprocess
    from sgrad.models.network import build_network, init_variables
    from sgrad.core.optim import build_train_optimizer
    from sgrad.devices.parallel import DATA_AXIS, make_data_parallel_runner
    from sgrad.devices.pipeline import build_pipeline, make_pipeline_runner, run_sequential, to_train_state
    from sgrad.core.step import create_state, make_train_step

    B, shape = 16, (6, 6, 1)
    rng = np.random.default_rng(0)  # the same data and initial parameters in both processes
    xs, ys, mean, std = device_data(rng, 128, shape)
    pre = lambda x: preprocess(x, mean, std)
    gather = lambda tree: jax.tree.map(lambda a: multihost_utils.process_allgather(a, tiled=True), tree)

    def max_diff(a, b):
        return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    # SGD: Adam divides by the root of tiny early SG gradients and so magnifies float rounding.
    sgd = ["optim.name=sgd", "optim.lr=0.01", "sg.optim.name=sgd", "sg.optim.lr=0.01"]
    cfg = make_cfg("mode=dni", "model.layers=2", "model.width=16", "sg.hidden_layers=1", "sg.width=32", *sgd)
    net = build_network(cfg, shape, 10)
    params, stats = init_variables(net, jax.random.key(1), jnp.zeros((B, *shape)))
    tx = build_train_optimizer(cfg, 100)
    fresh = lambda: create_state(jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, stats), tx)
    T = 10
    idx = rng.integers(0, 128, (T, B)).astype(np.int32)

    # Module 0 in process 0, module 1 in process 1: activations and SG targets cross between processes.
    pipe, state = build_pipeline(net, tx, fresh(), shape, B)
    state, metrics = make_pipeline_runner(pipe, pre, jax.devices())(state, xs, ys, idx, np.int32(T))
    got = to_train_state(pipe, state)
    ref = run_sequential(pipe, fresh(), xs, ys, idx, pre)
    assert int(got.step) == T
    assert max_diff(got.params["modules"], fresh().params["modules"]) > 0
    assert max_diff(got.params, ref.params) < 1e-5, max_diff(got.params, ref.params)
    print("pipeline ok", flush=True)

    # Without batch norm the full-batch gradient is the mean of the two processes' shard gradients.
    cfg = make_cfg("mode=cdni", "model.layers=3", "model.width=16", "model.batch_norm=false", "sg.batch_norm=false")
    net = build_network(cfg, shape, 10)
    params, stats = init_variables(net, jax.random.key(1), jnp.zeros((B, *shape)))
    tx = build_train_optimizer(cfg, 100)
    single, _ = make_chunk_runner(make_train_step(net, tx), mean, std)(fresh(), xs, ys, idx, np.int32(T))
    step = make_train_step(net, tx, axis_name=DATA_AXIS)
    multi, _ = make_data_parallel_runner(chunk_fn(step, mean, std), jax.devices())(fresh(), xs, ys, idx, np.int32(T))
    d = max_diff(gather(multi.params), single.params)
    assert d < 1e-5, d
    print("data ok", flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_pipeline_and_data_parallel_across_processes():
    code = SCRIPT.format(root=str(ROOT), port=_free_port())
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one device per process
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], env=env, cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        # Gloo writes its own connection lines to stdout.
        assert [line for line in out.splitlines() if line.endswith(" ok")] == ["pipeline ok", "data ok"], out


@pytest.mark.slow
def test_two_cli_processes_write_one_run(tmp_path, idx_dir):
    """Two `sgrad-train distributed=true` processes joined as SLURM would join them, started in different
    seconds (so Hydra's timestamped dirs differ): one run dir, every line written once, one event file."""
    job = str(50_000 + os.getpid() % 10_000)
    base = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
            "SLURM_JOB_ID": job, "SLURM_NTASKS": "2", "SLURM_STEP_NODELIST": "localhost",
            "SLURM_STEP_NUM_NODES": "1"}
    base.pop("XLA_FLAGS", None)
    args = [sys.executable, "-m", "sgrad.cli", "dataset=idx", f"dataset.dir={idx_dir}", "mode=dni", "parallel=data",
            "distributed=true", "model.width=16", "sg.width=16", "trainer.batch_size=32", "trainer.steps=40",
            "trainer.log_every=10", "trainer.eval_every=20", "trainer.progress=false", "checkpoint.every=20",
            "log.grad_probe_every=20"]
    procs = []
    for rank in range(2):
        env = {**base, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
        procs.append(subprocess.Popen(args, env=env, cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
        time.sleep(1.2)
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    runs = [d for d in (tmp_path / "outputs").glob("*/*") if d.is_dir()]
    assert len(runs) == 1, runs
    run = runs[0]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))
    assert [json.loads(l)["step"] for l in lines if "train/loss" in l] == [10, 20, 30, 40]
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    log = (run / "sgrad.log").read_text()
    assert log.count("step 40") == 1, log
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
