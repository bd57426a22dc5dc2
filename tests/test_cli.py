"""The command line: Hydra composition of every preset, one-line errors, a real run and a multirun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sgrad.cli import CONFIG_DIR
from sgrad.config import ConfigError, register
from sgrad.run.build import check
from sgrad.run.build import build_network
from sgrad.config.overrides import check_overrides
from sgrad.run import train_and_evaluate

ALL_EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "exp").glob("*.yaml"))
RECURRENT = [e for e in ALL_EXPERIMENTS
             if e.startswith(("copy_", "repeat_copy_", "ptb_char_", "seq_", "two_timescale"))]
TEXT = [e for e in ALL_EXPERIMENTS if e.startswith("text_")]  # feed-forward language models (model=transformer)
IMAGES = [e for e in ALL_EXPERIMENTS if e not in RECURRENT + TEXT]
EXPERIMENTS = IMAGES + TEXT
TINY = ["model.width=16", "model.channels=4", "model.kernel=3", "sg.width=16", "sg.conv_channels=4",
        "sg.kernel=3", "trainer.steps=20", "trainer.batch_size=32", "trainer.log_every=10",
        "trainer.progress=false", "trainer.eval_batch_size=256", "log.grad_probe_every=10", "trainer.epochs=null"]


RECURRENT_TINY = ["model.hidden=16", "trainer.steps=20", "trainer.log_every=10", "trainer.progress=false"]


def _compose(*overrides):
    register()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def _distinct_runs(experiments, *overrides):
    """The first experiment of each group whose tiny runs would be the same but for the data, and the first on
    each dataset: smoke-running the rest would repeat one of these (CI time)."""
    chosen, seen = [], set()
    for exp in experiments:
        cfg = OmegaConf.to_container(_compose(f"+exp={exp}", *overrides))
        data = cfg.pop("dataset")
        keys = {("run", repr(cfg)), ("data", repr(data))}
        if keys - seen:
            chosen.append(exp)
        seen |= keys
    return chosen


SMOKE_RUNS = _distinct_runs(IMAGES, "dataset=idx", "model.layers=3", *TINY)
RECURRENT_RUNS = [e for e in _distinct_runs(RECURRENT, *RECURRENT_TINY) if not e.startswith(("ptb_char", "seq_"))]


def test_defaults_are_the_paper_settings():
    cfg = _compose()
    assert (cfg.mode, cfg.model.name, cfg.model.width, cfg.model.batch_norm) == ("dni", "fcn", 256, True)
    assert (cfg.sg.hidden_layers, cfg.sg.width) == (2, 1024)
    assert (cfg.optim.name, cfg.optim.lr, list(cfg.optim.boundaries)) == ("adam", 3e-5, [300000, 400000])
    assert (cfg.trainer.batch_size, cfg.trainer.steps) == (256, 500000)
    assert cfg.sg.optim.lr == cfg.optim.lr  # SG models follow the module optimizer by default
    assert _compose("mode=cdni").sg.hidden_layers == 0  # cDNI: linear SG on [h, one-hot(y)]
    assert _compose("optim.lr=0.01", "sg.optim.lr=0.5").sg.optim.lr == 0.5


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_every_experiment_composes_and_builds(exp):
    cfg = _compose(f"+exp={exp}")
    check(cfg)
    shape = {"cifar10": (32, 32, 3), "text": (cfg.model.context,)}.get(str(cfg.dataset.name), (28, 28, 1))
    net = build_network(cfg, shape, 10)
    modules = -(-cfg.model.layers // cfg.model.dni_every)
    assert len(net.modules) == modules
    assert len(net.interface_models) == (0 if cfg.mode == "backprop" else modules - 1)
    assert (net.interface_label(jnp.zeros((2,), jnp.int32)) is not None) == (cfg.mode == "cdni")


def test_smoke_runs_cover_every_mode_and_model():
    cfgs = [_compose(f"+exp={e}") for e in SMOKE_RUNS]
    assert {(c.mode, c.model.name) for c in cfgs} >= {("backprop", "fcn"), ("dni", "fcn"), ("cdni", "fcn"),
                                                      ("dni", "cnn")}
    assert {"copy_dni", "copy_dni_aux", "copy_cdni", "copy_backprop", "two_timescale_dni"} <= set(RECURRENT_RUNS)
    assert any(e.startswith("repeat_copy") for e in RECURRENT_RUNS)


@pytest.mark.slow
@pytest.mark.parametrize("exp", SMOKE_RUNS)
def test_every_distinct_experiment_smoke_runs_on_tiny_data(exp, idx_dir, tmp_path):
    cfg = _compose(f"+exp={exp}", "dataset=idx", f"dataset.dir={idx_dir}", "model.layers=3", *TINY)
    summary = train_and_evaluate(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["step"] == 20


@pytest.mark.parametrize("exp", RECURRENT)
def test_every_recurrent_experiment_composes(exp, tmp_path):
    cfg = _compose(f"+exp={exp}")
    check(cfg)
    assert cfg.model.name == "lstm" and cfg.trainer.bptt >= 1
    assert cfg.sg.aux == exp.endswith("_aux") and (cfg.mode == "backprop") == exp.endswith("_backprop")
    assert (cfg.mode == "cdni") == exp.endswith("_cdni")


# The character corpus is not here (tests/test_recurrent.py writes one), so ptb_char_* only compose; so do
# seq_* (tests/test_sequential_images.py runs the task on IDX files it writes).
@pytest.mark.slow
@pytest.mark.parametrize("exp", RECURRENT_RUNS)
def test_every_recurrent_experiment_runs_on_tiny_settings(exp, tmp_path):
    summary = train_and_evaluate(_compose(f"+exp={exp}", *RECURRENT_TINY), tmp_path)
    assert summary["status"] == "completed" and summary["step"] == 20


@pytest.mark.parametrize("args, fragment", [
    (["model.widht=3"], "unknown config key 'model.widht': keys under model are: name, layers, width"),
    (["mode=foo"], "mode=foo is not a known choice: mode must be one of backprop, cdni, cdni_full, ddg, dgl, dni, dni_full"),
    (["dataset=imagenet"], "dataset must be one of cifar10, copy, fashion_mnist, idx, kmnist, mnist, ptb_char, repeat_copy"),
    (["+exp=nope"], "exp must be one of"),
    (["optim.name=adamw"], "optim.name must be adam, sgd"),
    (["sg.trace=backward"], "sg.trace must be forward, accumulate"),
    (["model.name=resnet"], "model.name must be fcn, cnn, lstm"),
    (["model.layers=abc"], "model.layers must be a value of type int"),
    (["trainer.epochs=x"], "trainer.epochs must be a value of type int or null"),
    (["-m", "mode=dni,bogus"], "mode=bogus is not a known choice"),
    (["sg.optim.lrr=1"], "unknown config key 'sg.optim.lrr': keys under sg.optim are: name, lr"),
    (["hydra.run.dir=out/a=b"], "cannot parse the argument 'hydra.run.dir=out/a=b'"),
    (["exp=mnist_dni"], "exp=mnist_dni: exp presets are added to the config, not chosen: write +exp=mnist_dni"),
    (["--cfg", "job", "-m", "mode=dni,cdni"], "--cfg and -m cannot be combined"),
])
def test_typos_give_one_line_naming_key_and_allowed_values(args, fragment):
    with pytest.raises(ConfigError) as err:
        check_overrides(args, CONFIG_DIR)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_valid_overrides_pass_the_check():
    check_overrides(["+exp=mnist_dni", "model.layers=6", "mode=cdni", "dataset.dir=/x", "trainer.epochs=null",
                     "-m", "seed=0,1,2", "hydra/launcher=basic", "hydra.run.dir=/tmp/x"],
                    CONFIG_DIR)


@pytest.mark.parametrize("override, fragment", [
    ("model.layers=1", "model.layers must be an integer >= 2"),
    ("model.layers=-3", "model.layers must be an integer >= 2"),
    ("checkpoint.keep=0", "checkpoint.keep must be an integer >= 1"),
    ("model.dni_every=4", "model.dni_every must be an integer in [1, model.layers-1=3]"),
    ("trainer.batch_size=0", "trainer.batch_size must be an integer >= 1"),
    ("optim.lr=inf", "optim.lr must be a finite number"),
    ("sg.scale=nan", "sg.scale must be a finite number"),
])
def test_bad_values_are_named(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        check(_compose(override))


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "sgrad.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_real_subprocess_run_writes_the_run_dir(idx_dir, tmp_path):
    run_dir = tmp_path / "run"
    res = _cli("+exp=mnist_cdni", "dataset=idx", f"dataset.dir={idx_dir}", "model.layers=3", *TINY,
               f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mode"] == "cdni" and summary["step"] == 20
    assert (run_dir / "metrics.jsonl").stat().st_size > 0
    # TensorBoard names the run by experiment and mode (the folder holding its event files).
    assert list((run_dir / "tb" / "exp=mnist_cdni,mode=cdni").glob("events.out.tfevents.*"))
    resolved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert resolved.mode == "cdni" and resolved.model.layers == 3


@pytest.mark.slow
def test_cli_errors_exit_nonzero_with_one_line(tmp_path):
    res = _cli("model.widht=3", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "sgrad-train: unknown config key 'model.widht': keys under model are: "
        "name, layers, width, batch_norm, dni_every, partition, modules, channels, kernel, pool, hidden, heads, context, dropout, _target_, args"]
    res = _cli("dataset=idx", f"dataset.dir={tmp_path / 'none'}", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert res.returncode == 2
    assert "files not found in" in res.stderr and str(tmp_path / "none") in res.stderr


@pytest.mark.slow
def test_multirun_sweeps_modes(idx_dir, tmp_path):
    sweep = tmp_path / "sweep"
    res = _cli("-m", "mode=backprop,dni", "dataset=idx", f"dataset.dir={idx_dir}", "model.layers=3", *TINY,
               f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    modes = sorted(json.loads(p.read_text())["mode"] for p in sweep.glob("*/summary.json"))
    assert modes == ["backprop", "dni"]


def test_sweep_plugins_compose():
    register()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True,
                      overrides=["+exp=table1_fashion_mnist_fcn", "hydra/launcher=submitit_slurm"])
        assert "submitit" in cfg.hydra.launcher._target_
        assert cfg.hydra.sweeper.params["model.layers"] == "3,4,5,6"
        cfg = compose(config_name="train", return_hydra_config=True,
                      overrides=["+exp=fashion_mnist_dni", "+hparams_search=cdni_optuna", "hydra/launcher=joblib"])
        assert "optuna" in cfg.hydra.sweeper._target_ and cfg.mode == "cdni"
        assert set(cfg.hydra.sweeper.params) == {"sg.optim.lr", "sg.hidden_layers", "sg.width"}


@pytest.mark.slow
def test_optuna_search_runs_trials(idx_dir, tmp_path):
    sweep = tmp_path / "optuna"
    res = _cli("-m", "+exp=mnist_dni", "+hparams_search=cdni_optuna", "dataset=idx", f"dataset.dir={idx_dir}",
               "model.layers=3", *TINY, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list(sweep.glob("*/summary.json"))) == 2
    assert "best_value" in (sweep / "optimization_results.yaml").read_text()
    assert "setup plugin" not in res.stdout + res.stderr  # alembic's start-up chatter stays out of the sweep's log


def test_a_launcher_plugin_that_is_not_installed_says_which_install_brings_it(monkeypatch):
    import sgrad.config.overrides as overrides
    monkeypatch.setitem(overrides.PLUGINS, "joblib", "hydra_plugins.not_installed_here")
    with pytest.raises(ConfigError, match=r"hydra/launcher=joblib needs .*pip install -e '.\[sweep\]'"):
        check_overrides(["-m", "hydra/launcher=joblib", "seed=0,1"], CONFIG_DIR)
    check_overrides(["-m", "hydra/launcher=basic", "seed=0,1"], CONFIG_DIR)


def test_report_without_matplotlib_says_which_install_brings_it(tmp_path):
    # A matplotlib that cannot be found, ahead of the real one on the path.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nclass _No:\n    def find_spec(self, name, *a):\n"
        "        if name == 'matplotlib' or name.startswith('matplotlib.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _No())\n")
    env = {**os.environ, "PYTHONPATH": str(hide)}
    res = subprocess.run([sys.executable, "scripts/report.py", str(tmp_path / "nowhere")], capture_output=True,
                         text=True, cwd=Path(CONFIG_DIR).parent, env=env, timeout=120)
    assert res.returncode != 0 and "pip install -e '.[report]'" in res.stderr
    assert not (tmp_path / "nowhere").exists()


def test_typed_training_length_beats_a_presets_epochs():
    from sgrad.cli import typed_length_wins
    argv = typed_length_wins(["-m", "+exp=decoupled_fashion_mnist_fcn", "trainer.steps=50"])
    cfg = _compose(*[a for a in argv if a != "-m"])
    assert cfg.trainer.steps == 50 and cfg.trainer.epochs is None
    # Without a typed length the preset's epochs stand; typing both is refused in one line.
    assert _compose("+exp=decoupled_fashion_mnist_fcn").trainer.epochs == 5
    assert typed_length_wins(["+exp=decoupled_fashion_mnist_fcn"]) == ["+exp=decoupled_fashion_mnist_fcn"]
    with pytest.raises(ConfigError, match="give one of them"):
        typed_length_wins(["trainer.steps=5", "trainer.epochs=1"])
    assert typed_length_wins(["trainer.steps=5", "trainer.epochs=null"]) == ["trainer.steps=5", "trainer.epochs=null"]
