"""Multi-host through jax.distributed: two processes on this machine, one CPU device each, joined over
localhost with gloo collectives (or MPI's, where the machine has them). The pipeline across processes equals the same schedule run sequentially
in one process, and data parallelism across processes equals the single-device step."""

import json
import os
import shutil
import time
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sgrad.devices.processes import device_count_env, layout_refusal, one_device_env, start_processes

from conftest import ROOT, program_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_a_worker_process_keeps_every_xla_flag_but_the_device_count():
    env = one_device_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0",
                          "HOME": "/h"})
    assert env == {"XLA_FLAGS": "--xla_backend_optimization_level=0", "HOME": "/h"}
    assert "XLA_FLAGS" not in one_device_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    # bench_devices.py's workers: the count replaced, the compile options kept.
    assert device_count_env(3, env)["XLA_FLAGS"] == \
        "--xla_force_host_platform_device_count=3 --xla_backend_optimization_level=0"
    assert device_count_env(2, {})["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"


# JAX's MPI collectives need an mpiexec and an MPIwrapper library built against its MPI (docs/parallelism.md,
# Transport): neither comes with pip, so the MPI case runs only where the machine has both.
HAS_MPI = bool(shutil.which("mpiexec") and os.environ.get("MPITRAMPOLINE_LIB"))


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["gloo", pytest.param("mpi", marks=pytest.mark.skipif(
    not HAS_MPI, reason="no mpiexec on PATH or no MPITRAMPOLINE_LIB (docs/parallelism.md, Transport)"))])
def test_pipeline_and_data_parallel_across_processes(transport):
    env = one_device_env({**program_env(), "JAX_CPU_COLLECTIVES_IMPLEMENTATION": transport})  # one device each
    program = str(ROOT / "tests" / "programs" / "across_processes.py")
    procs = start_processes([[sys.executable, program, str(_free_port())]] * 2, env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    # Gloo writes its own connection lines to stdout; under mpiexec both processes' lines come through one.
    oks = [line for out, _ in outs for line in out.splitlines() if line.endswith(" ok")]
    assert sorted(oks) == ["data ok", "data ok", "parts ok", "parts ok", "pipeline ok", "pipeline ok"], outs


def test_replicas_are_refused_on_mpi_collectives_on_cpu():
    import jax
    assert layout_refusal(2) is None  # gloo
    before = jax.config.jax_cpu_collectives_implementation
    jax.config.update("jax_cpu_collectives_implementation", "mpi")
    try:
        assert layout_refusal(1) is None
        assert "replicas=2 cannot run on JAX's MPI collectives" in layout_refusal(2)
    finally:
        jax.config.update("jax_cpu_collectives_implementation", before)


def test_mpi_processes_start_as_one_world_under_one_mpiexec(tmp_path):
    # A stand-in mpiexec that records how it was called: one block per process, each with its JAX_PROCESS_ID.
    fake = tmp_path / "mpiexec"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(tmp_path / 'argv')!r}, 'w'))\n")
    fake.chmod(0o755)
    env = {"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "mpi", "MPIEXEC": str(fake), "MPITRAMPOLINE_LIB": "/lib/w.so"}
    procs = start_processes([["python", "w.py"]] * 2, env, cores=[3, 5])
    assert len(procs) == 1 and procs[0].wait(timeout=60) == 0
    assert json.loads((tmp_path / "argv").read_text()) == [
        "-n", "1", "-env", "JAX_PROCESS_ID", "0", "taskset", "-c", "3", "python", "w.py", ":",
        "-n", "1", "-env", "JAX_PROCESS_ID", "1", "taskset", "-c", "5", "python", "w.py"]
    with pytest.raises(RuntimeError, match="MPITRAMPOLINE_LIB"):
        start_processes([["python"]] * 2, {**env, "MPITRAMPOLINE_LIB": ""})
    with pytest.raises(RuntimeError, match="mpiexec on PATH"):
        start_processes([["python"]] * 2, {"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "mpi", "PATH": str(tmp_path / "none")})
    # Under gloo, each its own process with its index.
    gloo = start_processes([[sys.executable, "-c", "import os; print(os.environ['JAX_PROCESS_ID'])"]] * 2,
                           {**os.environ, "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}, stdout=subprocess.PIPE,
                           text=True)
    assert [p.communicate(timeout=60)[0].strip() for p in gloo] == ["0", "1"]


def _slurm_processes(tmp_path, idx_dir, *extra):
    """Two `sgrad-train distributed=true` processes joined as SLURM would join them (one CPU device each)."""
    job = str(50_000 + (os.getpid() + len(extra)) % 10_000)
    base = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
            "SLURM_JOB_ID": job, "SLURM_NTASKS": "2", "SLURM_STEP_NODELIST": "localhost",
            "SLURM_STEP_NUM_NODES": "1"}
    base = one_device_env(base)
    args = [sys.executable, "-m", "sgrad.cli", "dataset=idx", f"dataset.dir={idx_dir}", "mode=dni", "parallel=data",
            "distributed=true", "model.width=16", "sg.width=16", "trainer.batch_size=32", "trainer.log_every=10",
            "trainer.eval_every=20", "trainer.progress=false", "checkpoint.every=20", "log.grad_probe_every=20",
            *extra]
    procs = []
    for rank in range(2):
        env = {**base, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
        procs.append(subprocess.Popen(args, env=env, cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
        time.sleep(1.2)  # a second apart: each process composes its own timestamped Hydra run dir
    return procs


def _finish(procs):
    try:
        return [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()


def _the_run(tmp_path):
    runs = [d for d in (tmp_path / "outputs").glob("*/*") if d.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.slow
def test_two_cli_processes_write_one_run(tmp_path, idx_dir):
    """Started in different seconds (so Hydra's timestamped dirs differ): one run dir, every line written
    once, one event file, one log."""
    procs = _slurm_processes(tmp_path, idx_dir, "trainer.steps=40")
    for p, (_, err) in zip(procs, _finish(procs)):
        assert p.returncode == 0, err[-3000:]
    run = _the_run(tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))
    assert [json.loads(l)["step"] for l in lines if "train/loss" in l] == [10, 20, 30, 40]
    assert len(list((run / "tb").rglob("events.out.tfevents.*"))) == 1
    log = (run / "sgrad.log").read_text()
    assert log.count("step 40") == 1, log
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def _process_of_rank(launcher: int, rank: int) -> int:
    """The pid of launch_local.py's process `rank` (its JAX_PROCESS_ID)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    return next(int(c) for c in children
                if f"JAX_PROCESS_ID={rank}".encode() in Path(f"/proc/{c}/environ").read_bytes().split(b"\0"))


def _stop_once_training(cmd, run: Path, cwd: Path, skip_logs: int, rank: int | None = None) -> tuple[dict, str]:
    """Start `cmd`, SIGTERM it once its training runs (the log's `skip_logs`+1-th pace line), wait: (summary, stderr).
    `rank`: the signal goes to that process alone, as a scheduler preempting one host would send it."""
    import signal
    proc = subprocess.Popen(cmd, cwd=cwd, env=one_device_env(program_env()), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while ((run / "sgrad.log").read_text() if (run / "sgrad.log").exists() else "").count("s per step") <= skip_logs:
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read()[-3000:] if proc.poll() else ""
        time.sleep(0.2)
    os.kill(proc.pid if rank is None else _process_of_rank(proc.pid, rank), signal.SIGTERM)
    err = proc.communicate(timeout=300)[1]
    # launch_local.py exits with its processes' first non-zero status: each stopped as preempted, none failed.
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err[-3000:]
    return json.loads((run / "summary.json").read_text()), err


@pytest.mark.slow
def test_sigterm_inside_a_logged_chunk_across_processes_saves_its_running_sums_and_resumes(idx_dir, tmp_path):
    # A pipeline's running sums have one row per device, so they span both processes (data parallelism's, replicated
    # over them, take the same gather); a stop inside a logged chunk must gather them whole into its checkpoint (it
    # once failed there, and the preempted run lost its checkpoint), and a resumed run must place them back.
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "launch_local.py"), "2", "+debug=tiny", "dataset=idx",
           f"dataset.dir={idx_dir}", "mode=cdni", "parallel=pipeline", "model.partition=balanced", "model.modules=2",
           "trainer.steps=1000000", "trainer.log_every=1000000", "trainer.eval_every=1000000", "checkpoint.every=0",
           "log.grad_probe_every=0", f"hydra.run.dir={run}"]
    # The README's recipe for one machine (scripts/launch_local.py); the signal reaches process 1 only (not the
    # writer): both stop at one step with a checkpoint.
    summary, err = _stop_once_training(cmd, run, tmp_path, 0, rank=1)
    assert summary["status"] == "preempted" and 0 < summary["step"] < 1000000, summary
    # Joined: each process has one CPU device (one_device_env), the run saw both.
    assert summary["machine/device_count"] == 2, summary
    assert "Resume with: sgrad-train" in err, err[-3000:]
    saved = run / "checkpoints" / str(summary["step"])
    assert (saved / "commit_success.txt").is_file() and (saved / "chunk_sums.npz").is_file(), err[-3000:]
    again, err = _stop_once_training(cmd, run, tmp_path, 1)
    assert f"resuming from the checkpoint at step {summary['step']}" in (run / "sgrad.log").read_text()
    assert again["status"] == "preempted" and again["step"] > summary["step"], (again, summary)
