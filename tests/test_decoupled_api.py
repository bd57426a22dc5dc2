"""sgrad as a library (sgrad/decoupled.py): a user's own Flax modules, decoupled in every mode, through the public
API and through `model=custom` in the runner; and the README's example, run as written."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, make_cfg, prototype_images
from residual_model import make_modules
from sgrad import RULES, decouple
from sgrad.config import ConfigError
from sgrad.models.synthetic_input import DenseInput
from sgrad.run.build import build_decoupled, check


def _readme_example(which: int = 0) -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own Flax model"):]
    return re.findall(r"```python\n(.*?)```", section, re.S)[which]


def test_readme_example_runs_and_learns():
    code = _readme_example()
    assert 15 <= len(code.strip().splitlines()) <= 25, "the README promises a 15-25 line example"
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    # The example trains on data it makes; chance is 10 %.
    assert float(namespace["metrics"]["accuracy"]) > 0.6, namespace["metrics"]
    assert "sg/cosine/1" in namespace["probe"]


def test_readme_regression_example_with_dropout_runs_and_learns():
    namespace = {}
    exec(compile(_readme_example(1), "README.md", "exec"), namespace)
    # Predicting 0 scores var(y); the example's network does far better, and reports no accuracy.
    assert float(namespace["test_mse"]) < 0.3 * float(namespace["y"].var()), namespace["test_mse"]
    assert "accuracy" not in namespace["metrics"]


def _data(n=64):
    x, y = prototype_images(n, 10, 6, seed=0)
    return jnp.asarray(x, jnp.float32)[..., None] / 255.0, jnp.asarray(y, jnp.int32)


# One mode of each kind in the fast tier (no interface, SG model, auxiliary classifier, delayed gradient).
@pytest.mark.parametrize("mode", [m if m in ("backprop", "dni", "dgl", "ddg") else pytest.param(m, marks=pytest.mark.slow)
                                  for m in sorted(RULES)])
def test_every_mode_trains_a_users_residual_stack(mode):
    x, y = _data()
    # Test-sized synthetic-input models (complete unlocking), as the runner's tests use (si.width=64).
    net = decouple(make_modules(10, width=16), mode, input_shape=(6, 6, 1), num_classes=10,
                   optimizer=optax.adam(3e-3), input_model=lambda shape: DenseInput(shape[0], 1, 64))
    assert len(net.network.modules) == 4 and net.rule is RULES[mode]
    start = net.init(jax.random.key(0), x, y)
    step = jax.jit(net.train_step)
    state, first = step(start, x, y)
    for _ in range(50):
        state, metrics = step(state, x, y)
    loss = lambda s: float(optax.softmax_cross_entropy_with_integer_labels(net.predict(s, x), y).mean())
    if net.rule.synthetic_inputs:
        # Complete unlocking: module i > 1 trains on I_i(x), and what shows within 50 steps is I_2 learning the
        # stem's real activations (higher up, targets that move; the real chain's loss follows slowly).
        assert float(metrics["si/loss/2"]) < 0.5 * float(first["si/loss/2"]), (mode, first, metrics)
    else:
        assert loss(state) < 0.95 * loss(start), (mode, loss(start), loss(state))
    assert bool(jnp.isfinite(metrics["loss"]))
    # Every module moved, the lowest included (after its delay in ddg / fr).
    for i, (a, b) in enumerate(zip(state.params["modules"], start.params["modules"])):
        assert any(not np.allclose(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))), (mode, i)
    logits = net.predict(state, x)
    assert logits.shape == (64, 10) and bool(jnp.all(jnp.isfinite(logits)))


def test_runner_builds_a_custom_model_through_hydra_and_through_the_public_api():
    cfg = make_cfg("model=custom", "model._target_=residual_model.make_modules", "+model.args.width=24",
                   "+model.args.blocks=3", "mode=dgl")
    check(cfg)
    net = build_decoupled(cfg, (6, 6, 1), 10, 100)
    assert [type(m).__name__ for m in net.network.modules] == ["Stem", "ResidualBlock", "ResidualBlock",
                                                                "ResidualBlock", "Head"]
    assert len(net.network.interface_models) == 4 and net.rule is RULES["dgl"]


@pytest.mark.parametrize("target, fragment", [
    ("no_such_package.make", "model._target_=no_such_package.make could not be called"),
    ("residual_model.not_modules", "model._target_=residual_model.not_modules returned dict"),
])
def test_a_custom_target_that_is_not_a_module_factory_is_one_line(target, fragment):
    cfg = make_cfg("model=custom", f"model._target_={target}")
    with pytest.raises(ConfigError, match=re.escape(fragment)) as err:
        build_decoupled(cfg, (6, 6, 1), 10, 100)
    assert "\n" not in str(err.value) and "flax.linen Modules" in str(err.value)


def test_a_custom_target_that_cannot_be_imported_is_refused_at_start_up():
    with pytest.raises(ConfigError, match=re.escape("model._target_=no_such_package.make could not be imported "
                                                    "(ModuleNotFoundError")):
        check(make_cfg("model=custom", "model._target_=no_such_package.make"))


@pytest.mark.slow
def test_cli_custom_target_error_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-m", "sgrad.cli", "model=custom", "model._target_=no_such_package.make"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "model._target_=no_such_package.make could not be imported" in res.stderr
    assert not (tmp_path / "outputs").exists()


def test_custom_needs_a_target():
    with pytest.raises(ConfigError, match="model._target_=None is not allowed"):
        check(make_cfg("model=custom"))


@pytest.mark.slow
def test_a_custom_model_trains_through_the_run_loop(idx_dir, tmp_path):
    from sgrad.run import train_and_evaluate
    cfg = make_cfg("model=custom", "model._target_=residual_model.make_modules", "dataset.name=idx",
                   f"dataset.dir={idx_dir}", "dataset.download=false", "mode=cdni", "sg.hidden_layers=0",
                   "trainer.steps=150", "trainer.eval_every=150")
    summary = train_and_evaluate(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["test/accuracy"] > 0.5, summary  # chance is 0.1
    assert (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_custom_model_pipelines_in_each_kind_of_stage(idx_dir, tmp_path):
    from conftest import run_on_cpu_devices
    res = run_on_cpu_devices("pipeline_custom", 3, idx_dir, tmp_path)
    assert res.stdout.splitlines() == ["cdni_full ok", "dgl ok", "fr ok", "run ok"]


def test_a_misspelled_factory_keyword_shows_the_users_type_error():
    cfg = make_cfg("model=custom", "model._target_=residual_model.make_modules", "+model.args.widht=24")
    with pytest.raises(ConfigError) as err:
        build_decoupled(cfg, (6, 6, 1), 10, 100)
    assert "unexpected keyword argument 'widht'" in str(err.value) and "\n" not in str(err.value), err.value


@pytest.mark.slow
def test_a_model_that_fails_to_build_is_one_line_and_leaves_no_run_dir(tmp_path):
    import os
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    res = subprocess.run([sys.executable, "-m", "sgrad.cli", "dataset=fashion_mnist", "model=custom",
                          "model._target_=residual_model.broken_modules", "trainer.steps=5"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "module 2 (Broken) failed on module 1 (Stem)'s output" in res.stderr
    assert not (tmp_path / "outputs").exists()
