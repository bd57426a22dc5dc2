"""The one run loop: run dirs are never destroyed, refusals touch nothing, and every task gets the same
behaviours (run dir line, eval lines, resume, preemption with the resume command, one eval cadence)."""

import hashlib
import json
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import (assert_same_run, final_checkpoint, make_cfg, preempt_when_checkpointed, run_on_cpu_devices,
                      stop_inside_a_chunk)
from sgrad.config import ConfigError, flat_config
from sgrad.run.metrics import read_jsonl
from sgrad.run import build_task, train_and_evaluate
from sgrad.run.loop import eval_every
from sgrad.run.rundir import check_run_dir, differing_keys, record_config
from sgrad.run.pacing import DISPATCH_SECONDS
from sgrad.run.record import Preempted

ROOT = Path(__file__).resolve().parent.parent


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy_cfg(*extra):
    return make_cfg("model.name=lstm", "dataset.name=copy", "mode=dni", "model.hidden=16", "trainer.bptt=3",
                    "trainer.batch_size=8", "trainer.log_every=10", "trainer.steps=40", "sg.hidden_layers=0",
                    "checkpoint.every=20", "log.grad_probe_every=20", *extra)


def test_a_rerun_may_change_only_how_long_and_how_often():
    a = make_cfg("trainer.steps=100")
    assert differing_keys(flat_config(a), flat_config(make_cfg("trainer.steps=200", "checkpoint.every=7"))) == []
    assert differing_keys(flat_config(a), flat_config(make_cfg("model.width=128", "optim.lr=0.5"))) == \
        ["model.width", "optim.lr"]


def test_changed_config_is_refused_naming_the_keys(tmp_path):
    record_config(make_cfg(), tmp_path)
    check_run_dir(make_cfg("trainer.steps=9"), tmp_path)
    with pytest.raises(ConfigError, match=r"model.width: 32 -> 128.*optim.lr.*start fresh"):
        check_run_dir(make_cfg("model.width=128", "optim.lr=0.5"), tmp_path)


def test_eval_every_null_means_once_per_epoch_for_every_task(idx_dir, tmp_path):
    image = build_task(make_cfg("dataset.name=idx", f"dataset.dir={idx_dir}"))
    assert eval_every(image.cfg, image) == image.steps_per_epoch > 0
    corpus = {"train": (["a", "b", "c"] * 400), "valid": ["a", "b"] * 50, "test": ["c", "a"] * 50}
    vocab = ["a", "b", "c"]
    ids = {k: np.array([vocab.index(c) for c in v], "int32") for k, v in corpus.items()}
    ids["vocab"] = np.array(vocab)
    text = build_task(_copy_cfg("dataset.name=text", "trainer.batch_size=4"), text=ids)
    assert eval_every(text.cfg, text) == text.steps_per_epoch == text.stream.windows_per_epoch
    # Generated streams have no epochs: they are evaluated at the end.
    copy = build_task(_copy_cfg())
    assert eval_every(copy.cfg, copy) == 0
    assert eval_every(OmegaConf.merge(copy.cfg, {"trainer": {"eval_every": 5}}), copy) == 5


@pytest.mark.slow
def test_a_text_stream_resumes_with_m_s_eligibility_trace(tmp_path):
    # Text never resets, so accumulate BP(λ)'s trace crosses chunks and checkpoints (on Copy every chunk starts
    # fresh sequences and the trace carried into it meets a zero TD error): a resume must restore it exactly.
    vocab = ["a", "b", "c"]
    corpus = {"train": "abcab" * 300, "valid": "abcba" * 20, "test": "cabab" * 20}
    ids = {k: np.array([vocab.index(c) for c in v], "int32") for k, v in corpus.items()}
    ids["vocab"] = np.array(vocab)
    cfg = lambda *extra: _copy_cfg("dataset.name=text", "trainer.batch_size=4", "sg.trace=accumulate",
                                   "sg.trace_lambda=0.9", "trainer.eval_every=40", *extra)
    train_and_evaluate(cfg(), tmp_path / "ref", text=ids)
    run = tmp_path / "run"
    preempt_when_checkpointed(run)
    with pytest.raises(Preempted):
        train_and_evaluate(cfg("trainer.steps=400", "checkpoint.every=10"), run, text=ids)
    again = train_and_evaluate(cfg(), run, text=ids)
    assert again["status"] == "completed" and again["step"] == 40
    drop = lambda rows: [{k: v for k, v in r.items() if not k.startswith("watch/perf/")} for r in rows]
    assert drop(read_jsonl(run / "metrics.jsonl")) == drop(read_jsonl(tmp_path / "ref" / "metrics.jsonl"))


@pytest.mark.slow
def test_recurrent_run_preempted_resumes_with_no_duplicate_steps(tmp_path):
    ref = train_and_evaluate(_copy_cfg(), tmp_path / "ref")
    run = tmp_path / "run"
    preempt_when_checkpointed(run)
    with pytest.raises(Preempted, match=rf"Resume with: sgrad-train .*hydra.run.dir={run}"):
        train_and_evaluate(_copy_cfg("trainer.steps=400", "checkpoint.every=10"), run)
    assert json.loads((run / "summary.json").read_text())["status"] == "preempted"
    again = train_and_evaluate(_copy_cfg(), run)
    assert again["status"] == "completed" and again["step"] == 40
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "train/loss" in r]
    assert steps == [10, 20, 30, 40]
    drop = lambda rows: [{k: v for k, v in r.items() if not k.startswith("watch/perf/")} for r in rows]
    assert drop(read_jsonl(run / "metrics.jsonl")) == drop(read_jsonl(tmp_path / "ref" / "metrics.jsonl"))
    assert again["max_length_solved"] == ref["max_length_solved"]


@pytest.mark.slow
def test_two_clock_run_checkpoints_and_resumes(tmp_path):
    cfg = lambda steps: make_cfg("model.name=lstm", "dataset.name=two_timescale", "mode=dni", "model.hidden=8",
                                 "trainer.bptt=3", "dataset.bits=1", "trainer.batch_size=8", "trainer.log_every=10",
                                 f"trainer.steps={steps}", "sg.hidden_layers=0", "checkpoint.every=10")
    train_and_evaluate(cfg(20), tmp_path / "ref")
    ref_rows = read_jsonl(tmp_path / "ref" / "metrics.jsonl")
    train_and_evaluate(cfg(10), tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "10").is_dir()
    train_and_evaluate(cfg(20), tmp_path / "run")
    drop = lambda rows: [{k: v for k, v in r.items() if not k.startswith("watch/perf/")} for r in rows]
    assert drop(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == drop(ref_rows)


# --- the command line --------------------------------------------------------------------------

def _cli(*args, timeout=300, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "sgrad.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


COPY_RUN = ["+exp=copy_dni", "model.hidden=16", "trainer.steps=40", "trainer.log_every=10", "trainer.progress=false",
            "checkpoint.every=20", "log.grad_probe_every=20", "trainer.eval_every=20"]


@pytest.mark.slow
def test_cli_recurrent_run_says_where_it_writes_and_logs_each_evaluation(tmp_path):
    run = tmp_path / "run"
    res = _cli(*COPY_RUN, f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"run dir {run}" in res.stdout
    evals = [l for l in res.stdout.splitlines() if "curriculum length" in l]
    assert len(evals) == 2 and "step 20" in evals[0] and "step 40" in evals[1]
    assert "curriculum length" in (run / "sgrad.log").read_text()


@pytest.mark.slow
def test_cli_changed_rerun_leaves_the_earlier_run_byte_identical(tmp_path):
    run = tmp_path / "run"
    assert _cli(*COPY_RUN, f"hydra.run.dir={run}").returncode == 0
    before = _tree_digest(run)
    res = _cli(*COPY_RUN, "model.hidden=32", "trainer.steps=60", f"hydra.run.dir={run}")
    assert res.returncode == 2
    errors = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(errors) == 1 and "model.hidden: 16 -> 32" in errors[0], res.stderr
    assert _tree_digest(run) == before
    # Running longer with the same settings resumes.
    res = _cli(*COPY_RUN, "trainer.steps=60", f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "train/loss" in r] == [10, 20, 30, 40, 50, 60]


@pytest.mark.slow
def test_cli_rerun_that_fails_to_start_leaves_the_run_byte_identical(idx_dir, tmp_path):
    run = tmp_path / "run"
    tiny = ["+debug=tiny", "dataset=idx", "trainer.steps=30", f"hydra.run.dir={run}"]
    assert _cli(*tiny, f"dataset.dir={idx_dir}").returncode == 0
    before = _tree_digest(run)
    # dataset.dir may change between starts (the data moved), so this rerun is accepted, then cannot load.
    res = _cli(*tiny, f"dataset.dir={tmp_path / 'nowhere'}")
    assert res.returncode == 2 and "files not found" in res.stderr, res.stderr[-2000:]
    assert _tree_digest(run) == before


def test_cli_refused_config_creates_no_run_dir(tmp_path):
    res = _cli("trainer.batch_size=-5", f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 2 and "trainer.batch_size" in res.stderr
    assert not (tmp_path / "run").exists()


def test_a_second_stop_signal_exits_at_once_whatever_the_process_waits_on():
    import signal

    from conftest import program_env
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "programs" / "blocked_in_c.py")],
                            env=program_env(), cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None  # the first signal asks for a clean stop; the run is still busy
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM and "second SIGTERM: exiting now" in err, err
    assert "woke up" not in out


def test_cli_unwritable_run_dir_is_one_line_and_exit_2():
    res = _cli("trainer.steps=1", "hydra.run.dir=/proc/sgrad-run")
    assert res.returncode == 2
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("sgrad-train: cannot write the run dir /proc/sgrad-run"), lines


def test_a_custom_models_keyword_arguments_pass_the_command_line_check():
    from sgrad.config.compose import CONFIG_DIR
    from sgrad.config.overrides import check_overrides
    # The README's command: model.args is the user's function's keywords, whatever they are called.
    check_overrides(["model=custom", "model._target_=my_package.models.make_modules", "+model.args.width=64",
                     "+model.args.blocks=3"], CONFIG_DIR)
    with pytest.raises(ConfigError, match="unknown config key 'model.widht'"):
        check_overrides(["model.widht=64"], CONFIG_DIR)


def test_cli_help_says_presets_are_added_with_a_plus_and_names_every_mode():
    from sgrad.modes import RULES
    res = _cli("--help")
    assert res.returncode == 0 and "+exp=NAME" in res.stdout
    header = res.stdout.split("Examples:")[0]
    assert all(f"\n  {name} " in header for name in RULES), header


@pytest.mark.slow
def test_cli_sweep_names_tensorboard_runs_by_what_varies_and_writes_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    sweep = tmp_path / "sweep"
    res = _cli("-m", "+exp=copy_dni", "mode=backprop,dni", "model.hidden=8", "trainer.steps=20",
               "trainer.log_every=10", "trainer.progress=false", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "[job 1 mode=dni] " in res.stdout and "[job 0 mode=backprop] " in res.stdout
    assert "] [job" not in res.stdout  # one tag per line, also when jobs share a process
    runs = sorted(p.relative_to(sweep).as_posix() for p in sweep.glob("*/tb/*") if p.is_dir())
    assert runs == ["0/tb/mode=backprop", "1/tb/mode=dni"]
    for run, mode in zip(runs, ("backprop", "dni")):
        acc = EventAccumulator(str(sweep / run))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        assert start.session_start_info.hparams["mode"].string_value == mode
        assert start.session_start_info.hparams["model.hidden"].string_value == "8"  # shown as 8, not 8.0000
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        assert "curriculum/solved" in [m.name.tag for m in experiment.metric_infos]
        assert "train/loss" in acc.Tags()["scalars"]


@pytest.mark.slow  # an end-to-end run through the CLI
def test_cli_error_inside_the_run_is_printed_once_and_leaves_no_stub(tmp_path):
    res = _cli("dataset=idx", f"dataset.dir={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 2
    said = [l for l in (res.stdout + res.stderr).splitlines() if "nowhere" in l]
    assert len(said) == 1 and said[0].startswith("sgrad-train: "), res.stdout + res.stderr
    assert not (tmp_path / "run").exists()
    # With Hydra's own run dir (outputs/<date>/<time>), the date folder made for it goes too.
    res = _cli("dataset=idx", f"dataset.dir={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert res.returncode == 2 and not (tmp_path / "outputs").exists()


def test_progress_bar_shows_the_loss_of_the_step_it_shows(idx_dir, tmp_path, monkeypatch):
    import functools
    import io
    import re
    from tqdm import tqdm
    from sgrad.run import loop
    screen = io.StringIO()
    monkeypatch.setattr(loop, "tqdm", functools.partial(tqdm, file=screen, mininterval=0))
    cfg = make_cfg("dataset.name=idx", f"dataset.dir={idx_dir}", "trainer.steps=30", "trainer.log_every=10",
                   "trainer.progress=true", "trainer.eval_every=30")
    train_and_evaluate(cfg, tmp_path)
    logged = {r["step"]: r["train/loss"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r}
    frames = re.findall(r"\| (\d+)/30 \[[^\]]*loss=([0-9.e+-]+)", screen.getvalue())
    assert {int(s) for s, _ in frames} == {10, 20, 30}
    for step, shown in frames:
        assert float(shown) == pytest.approx(logged[int(step)], rel=1e-3)


def test_tensorboard_opens_on_loss_error_and_sg_quality_not_bookkeeping(idx_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg = make_cfg("dataset.name=idx", f"dataset.dir={idx_dir}", "mode=dni", "trainer.steps=20",
                   "trainer.log_every=10", "log.grad_probe_every=10", "trainer.eval_every=20")
    train_and_evaluate(cfg, tmp_path)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"sg/cosine/1", "test/error", "train/loss", "watch/epoch", "watch/perf/steps_per_sec"} <= set(tags)
    # TensorBoard's Time Series dashboard orders card groups by name and expands the first two.
    groups = sorted({t.split("/", 1)[0] for t in tags})
    assert groups[:2] == ["sg", "test"] and groups[-1] == "watch"


@pytest.mark.slow
def test_wall_time_counts_every_segment_of_a_resumed_and_rerun_run(tmp_path):
    train_and_evaluate(_copy_cfg("trainer.steps=20"), tmp_path)
    first = json.loads((tmp_path / "summary.json").read_text())
    train_and_evaluate(_copy_cfg(), tmp_path)  # resumes from step 20 to 40
    train_and_evaluate(_copy_cfg(), tmp_path)  # finished: a rerun does nothing but keeps the total
    last = json.loads((tmp_path / "summary.json").read_text())
    assert len(last["wall_segments"]) == 3 and last["wall_segments"][0] == pytest.approx(first["wall_seconds"])
    assert last["wall_seconds"] == pytest.approx(sum(last["wall_segments"]))
    assert last["wall_seconds"] > last["wall_segments"][-1] + first["wall_seconds"] * 0.99


def test_resume_command_of_a_sweep_job_resumes_the_whole_sweep(monkeypatch, tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    from sgrad.config.compose import compose_config
    from sgrad.run.rundir import resume_command
    cfg = compose_config("+exp=decoupled_fashion_mnist_fcn", "trainer.steps=50", hydra=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(tmp_path / "sweep")
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    HydraConfig.instance().set_config(cfg)
    monkeypatch.setattr(sys, "argv", ["sgrad-train", "-m", "+exp=decoupled_fashion_mnist_fcn", "trainer.steps=50"])
    try:
        command = resume_command(tmp_path / "sweep" / "3")
    finally:
        HydraConfig.instance().cfg = None
    assert command == (f"sgrad-train -m +exp=decoupled_fashion_mnist_fcn trainer.steps=50 "
                       f"hydra.sweep.dir={tmp_path / 'sweep'}")


def _tiny_cli(idx_dir, run, *extra) -> list[str]:
    return [sys.executable, "-m", "sgrad.cli", "+debug=tiny", "dataset=idx", f"dataset.dir={idx_dir}",
            "dataset.download=false", "trainer.progress=false", f"hydra.run.dir={run}", *extra]


@pytest.mark.slow
def test_a_stop_signal_after_the_run_finished_leaves_it_complete_and_exits_zero(idx_dir, tmp_path):
    from conftest import program_env
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "programs" / "late_stop.py"),
                          *_tiny_cli(idx_dir, run, "trainer.steps=4", "trainer.log_every=2")[3:]],
                         capture_output=True, text=True, timeout=300, env=program_env(), cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "stop signal after the run completed" in res.stderr and "start-up" not in res.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_during_start_up_is_one_line_and_leaves_no_run_dir(idx_dir, tmp_path, sig):
    import signal

    from conftest import program_env
    run, marker = tmp_path / "run", tmp_path / "building"
    # A suite started in the background inherits SIGINT ignored (POSIX, without job control), and Python then
    # leaves it ignored: the run gets SIGINT's default, as from a terminal.
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    proc = subprocess.Popen(_tiny_cli(idx_dir, run, "model=custom", "model._target_=slow_start_model.make_modules",
                                      f"+model.args.marker={marker}"),
                            env=program_env(), cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=default_sigint)
    deadline = time.time() + 120
    while not marker.exists():  # the network is being built: start-up, nothing trained yet
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.1)
    proc.send_signal(getattr(signal, sig))
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()  # not left to train on beside the rest of the suite
        raise AssertionError(f"{sig} during start-up did not end the run: {proc.communicate()[1][-2000:]}")
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted during start-up" in err, err[-2000:]
    assert not run.exists() and not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_stop_signal_is_acknowledged_at_once_with_the_step_the_run_then_stops_at(idx_dir, tmp_path):
    import queue
    import signal
    import threading

    run = tmp_path / "run"
    # Chunks of 1500 steps: seconds each, so the signal lands mid-chunk.
    proc = subprocess.Popen(_tiny_cli(idx_dir, run, "trainer.steps=1000000", "trainer.log_every=1500",
                                      "checkpoint.every=1000000", "trainer.eval_every=1000000",
                                      "log.grad_probe_every=0"),
                            cwd=ROOT, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    deadline = time.time() + 180
    while not (run / "metrics.jsonl").exists() or "train/loss" not in (run / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    said = ""
    while "will stop at step" not in said:
        said = lines.get(timeout=60)
    running_when_said = proc.poll() is None
    announced = int(said.split("will stop at step ")[1].split()[0])
    assert "in about" in said and "a second SIGTERM exits at once" in said, said
    proc.wait(timeout=120)
    assert running_when_said  # acknowledged before the chunk ended, not when the run stopped
    assert proc.returncode == 143
    summary = json.loads((run / "summary.json").read_text())
    # (At a chunk's end, or between two of its dispatches when a loaded machine splits the chunk by time.)
    assert summary["status"] == "preempted" and summary["step"] == announced
    assert (run / "checkpoints" / str(announced)).is_dir()


def test_hparams_show_the_settings_of_the_runs_kind_of_model_and_what_the_sweep_varies():
    from sgrad.run.loop import hparams_of
    fcn = hparams_of(make_cfg("model.name=fcn"), ["sg.width"])
    assert {"model.width", "model.layers", "sg.width", "mode"} <= set(fcn) and "model.hidden" not in fcn
    lstm = hparams_of(make_cfg("+exp=copy_dni"), [])
    assert {"model.hidden", "trainer.bptt"} <= set(lstm) and "model.width" not in lstm


# --- a chunk as several dispatches, and a stop inside it ---------------------------------------------------------

TASKS = {
    "classification": lambda idx_dir: make_cfg("dataset.name=idx", f"dataset.dir={idx_dir}", "mode=dni",
                                               "trainer.steps=30", "trainer.log_every=10", "checkpoint.every=20",
                                               "log.grad_probe_every=20", "trainer.eval_every=20"),
    "recurrent": lambda idx_dir: _copy_cfg("trainer.steps=30"),
    "two_clocks": lambda idx_dir: make_cfg("model.name=lstm", "dataset.name=two_timescale", "mode=dni",
                                           "model.hidden=8", "trainer.bptt=3", "dataset.bits=1",
                                           "trainer.batch_size=8", "trainer.log_every=10", "trainer.steps=30",
                                           "sg.hidden_layers=0", "checkpoint.every=20"),
}


@pytest.mark.slow  # two runs and a stopped one each: 11-17 s even for classification
@pytest.mark.parametrize("family", TASKS)
def test_a_stop_inside_a_chunk_checkpoints_there_and_the_resumed_run_equals_one_never_stopped(
        idx_dir, tmp_path, monkeypatch, family):
    cfg = TASKS[family](idx_dir)
    ref = train_and_evaluate(cfg, tmp_path / "ref")  # each chunk in one dispatch, uninterrupted
    run = tmp_path / "run"
    # Dispatch 1 is step 0 (it compiles), dispatch 13 ends at step 13: inside the second logged chunk.
    stop_inside_a_chunk(monkeypatch.setattr, after=13)
    with pytest.raises(Preempted) as stopped:
        train_and_evaluate(cfg, run)
    assert stopped.value.step == 13 and stopped.value.step % cfg.trainer.log_every, stopped.value.step
    assert (run / "checkpoints" / "13" / "chunk_sums.npz").is_file()
    assert json.loads((run / "summary.json").read_text())["status"] == "preempted"
    # As if the first segment had trained for 1000 s: the resumed run's training seconds go on from there.
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({**r, "watch/perf/train_seconds": 1000.0} if "watch/perf/train_seconds" in r else r) + "\n"
        for r in rows))
    again = train_and_evaluate(cfg, run)  # still one step per dispatch: a chunk in many dispatches
    assert again["status"] == "completed" and again["step"] == ref["step"]
    assert_same_run(run, tmp_path / "ref")
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["watch/perf/train_seconds"] for r in logged if "watch/perf/train_seconds" in r]
    assert seconds[0] == 1000.0 and len(seconds) > 1 and all(b > a for a, b in zip(seconds, seconds[1:])), seconds


@pytest.mark.slow
def test_a_stop_inside_a_chunk_resumes_exactly_in_every_parallel_layout(idx_dir, tmp_path):
    # parallel=data, the unlocked and locked pipelines and pipeline x replicas on 4 CPU devices.
    out = run_on_cpu_devices("stop_inside_a_chunk", 4, idx_dir, tmp_path).stdout
    assert out.split() == ["data", "ok", "pipeline", "ok", "pipeline-ddg", "ok", "pipeline-replicas", "ok"], out


# A real network whose step takes about 0.3 s here (an FCN of 2560-wide layers at batch 256), logged once in 32 steps:
# before dispatches were bounded in time, a stop signal waited for the whole chunk. The chunk is long enough that
# the two dispatches of ~2 s in flight when the signal lands do not finish it.
SLOW_STEPS = 32
SLOW_STEP = ["mode=dni", "model.width=2560", "model.layers=4", "sg.width=512", "trainer.batch_size=256",
             f"trainer.steps={SLOW_STEPS}", f"trainer.log_every={SLOW_STEPS}", "checkpoint.every=100",
             "trainer.eval_every=100", "log.grad_probe_every=0"]


def _start(idx_dir, run) -> tuple[subprocess.Popen, "queue.Queue[str]"]:
    import queue
    import threading
    proc = subprocess.Popen(_tiny_cli(idx_dir, run, *SLOW_STEP), cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [*map(lines.put, proc.stdout), lines.put("")], daemon=True).start()
    return proc, lines


def _wait_for(lines, proc, text: str, timeout: float = 300) -> str:
    import queue
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert proc.poll() is None, "the run ended first"
            continue
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r}")


@pytest.mark.slow
def test_sigterm_inside_a_long_chunk_stops_within_seconds_with_a_checkpoint_there(idx_dir, tmp_path):
    # That a run stopped inside a chunk resumes from that checkpoint to the uninterrupted result is the stop tests'
    # above (every task family and layout); here: a real signal on a slow network is honoured within seconds and
    # leaves a complete checkpoint at the step it announced. (Resuming would train the wide network to the end.)
    import signal
    run = tmp_path / "run"
    proc, lines = _start(idx_dir, run)
    pace = _wait_for(lines, proc, "s per step")  # the first steps ran: the pace is measured
    # A long chunk indeed: several dispatches of DISPATCH_SECONDS, so a stop that waited for its end would show.
    assert float(pace.split("training: ")[1].split()[0]) * SLOW_STEPS > 3 * DISPATCH_SECONDS, pace
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    said = _wait_for(lines, proc, "will stop at step", timeout=30)
    announced = int(said.split("will stop at step ")[1].split()[0])
    stopped = _wait_for(lines, proc, "stopped by SIGTERM", timeout=60)
    proc.wait(timeout=60)
    took = time.time() - sent
    assert proc.returncode == 143 and took < 30, (proc.returncode, took)
    assert f"at step {announced};" in stopped and 0 < announced < SLOW_STEPS, (said, stopped)
    assert (run / "checkpoints" / str(announced) / "chunk_sums.npz").is_file()
    step, tree = final_checkpoint(run)  # restores: the checkpoint is whole
    assert step == announced and tree, step
    assert json.loads((run / "summary.json").read_text())["status"] == "preempted"


@pytest.mark.slow
def test_sigterm_while_the_first_chunk_compiles_exits_at_once_and_leaves_no_run_dir(idx_dir, tmp_path):
    import signal
    run = tmp_path / "run"
    proc, lines = _start(idx_dir, run)
    _wait_for(lines, proc, "compiling the training step")
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    proc.wait(timeout=60)
    took = time.time() - sent
    said = "".join(iter(lambda: lines.get(timeout=10), ""))
    assert proc.returncode == 143 and took < 15, (proc.returncode, took, said[-2000:])
    assert "SIGTERM before the first training step finished: exiting now; nothing was trained, no run dir was " \
           "left" in said and "Traceback" not in said, said[-2000:]
    assert not run.exists() and not (tmp_path / "outputs").exists()
