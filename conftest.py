"""Shared test fixtures: small configs and tiny datasets that the tests write themselves."""

from __future__ import annotations

import atexit
import copy
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests check what a program computes, not how fast it runs, and compiling is most of a small test's time: LLVM's
# backend optimisation off saves a tenth of it, and XLA:CPU's older elemental emitters instead of its fusion
# emitters a third of what is left (the processes the tests start inherit both; XLA's own HLO passes, which decide
# what is computed, still run).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):  # unless a test chose its own
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
# One compilation cache for the whole session, the processes the tests start included: each fresh process
# would otherwise recompile the same small programs (most of a short run's time on CPU).
if "SGRAD_CACHE" not in os.environ:  # model.partition=profiled keeps its splits there: not in the user's home
    os.environ["SGRAD_CACHE"] = tempfile.mkdtemp(prefix="sgrad-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SGRAD_CACHE"], ignore_errors=True)
# A test's program must not depend on which convolution library a timing picked (their sums differ in the last
# bits); tests/test_conv_library.py measures for real.
os.environ.setdefault("SGRAD_CPU_CONV", "eigen")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sgrad-test-jax-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import numpy as np
import pytest
from sgrad.data.idx import write_idx

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
ROOT = Path(__file__).resolve().parent


def program_env(**extra: str) -> dict[str, str]:
    """The environment of a test program under tests/programs/ (it imports conftest and sgrad from ROOT)."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
            **extra}


def run_on_cpu_devices(program: str, devices: int, *args: str, compile_flags: str = FAST_COMPILE
                       ) -> subprocess.CompletedProcess:
    """Run tests/programs/<program>.py in a fresh process with `devices` CPU devices (JAX fixes the count
    when it starts)."""
    env = program_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {compile_flags}")
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "programs" / f"{program}.py"), *map(str, args)],
                         env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]):
    from sgrad.config.compose import compose_config
    return compose_config("+debug=tiny", *overrides)


def make_cfg(*overrides: str):
    """The config `sgrad-train +debug=tiny <overrides>` composes (configs/debug/tiny.yaml: test-sized shapes), as a
    fresh copy the test may change."""
    return copy.deepcopy(_composed(tuple(overrides)))


def randomized_interface(params: dict, key) -> dict:
    """`params` with every interface-model parameter (zero output layers included) drawn at random, so that
    synthetic gradients are non-trivial."""
    import jax
    leaves, tree = jax.tree.flatten(params["interface"])
    leaves = [0.3 * jax.random.normal(k, l.shape) for k, l in zip(jax.random.split(key, len(leaves)), leaves)]
    return {**params, "interface": jax.tree.unflatten(tree, leaves)}


def composed_loss(net, module_params, stats, x, y, eps=None):
    """Independent reference for the rule's tests: the modules as one composed function (train mode), eps[i]
    added to module i's output, the mean cross-entropy over every label (a class, or a token per position)."""
    import optax
    from sgrad.models.network import apply
    h = x
    for i, (f, p, s) in enumerate(zip(net.modules, module_params, stats["modules"])):
        h, _ = apply(f, p, s, (h,), True)
        if eps is not None and i < len(eps):
            h = h + eps[i]
    return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()


def sgd_states(net, params, stats, batches, lr: float) -> list:
    """The train step of `net`'s mode run over `batches` with plain SGD (modules and interface models): the state
    before every step and after the last, starting from what the mode carries for the first batch."""
    import jax
    import optax

    from sgrad.core.optim import Optimizers
    from sgrad.core.step import init_state, make_train_step
    tx = Optimizers(optax.sgd(lr), optax.sgd(lr))
    state = init_state(net, params, stats, tx, *batches[0])
    step = jax.jit(make_train_step(net, tx))
    states = [state]
    for xb, yb in batches:
        state, _ = step(state, xb, yb)
        states.append(state)
    return states


def prototype_images(n: int, classes: int, side: int, seed: int, noise: float = 60.0):
    """Images drawn around one random prototype per class: learnable, far from trivially separable."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(1234).uniform(0, 255, (classes, side, side))
    y = rng.integers(0, classes, n)
    x = protos[y] + rng.normal(0, noise, (n, side, side))
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.uint8)


def device_data(rng: np.random.Generator, n: int, shape: tuple[int, ...]):
    """Random uint8 images and labels on the device, with the per-channel mean/std the runners take."""
    import jax.numpy as jnp
    xs = jnp.asarray(rng.integers(0, 256, (n, *shape), dtype=np.uint8))
    ys = jnp.asarray(rng.integers(0, 10, n).astype(np.int32))
    return xs, ys, jnp.full((1,), 0.5), jnp.full((1,), 0.25)


def max_diff(a, b) -> float:
    """The largest absolute difference between two pytrees of arrays of the same structure (on the host: each
    leaf's difference as a jax operation would compile a program per shape, most of a small program's time)."""
    import jax
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def program_setup(cfg, shape: tuple[int, ...], batch: int, rng: np.random.Generator):
    """What the multi-device programs (tests/programs/) compare runs on: the network of `cfg`, 128 random
    examples on the device, and fresh() -> a new copy of one initial state (the runners donate the state, so
    every run starts from its own copy). -> (net, tx, fresh, xs, ys, preprocess, (mean, std))"""
    import jax
    import jax.numpy as jnp
    from sgrad.core.step import init_state
    from sgrad.devices.chunk import preprocess
    from sgrad.models.network import init_variables
    from sgrad.run.build import build_network, build_train_optimizer
    net = build_network(cfg, shape, 10)
    xs, ys, mean, std = device_data(rng, 128, shape)
    params, stats = init_variables(net, jax.random.key(1), jnp.zeros((batch, *shape)))
    tx = build_train_optimizer(cfg, 100)
    pre = lambda x: preprocess(x, mean, std)
    fresh = lambda: init_state(net, jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, stats), tx,
                               pre(xs[:batch]), ys[:batch])
    return net, tx, fresh, xs, ys, pre, (mean, std)


def write_idx_dataset(folder, n_train=1024, n_test=512, classes=10, side=8, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    xtr, ytr = prototype_images(n_train, classes, side, seed=0)
    xte, yte = prototype_images(n_test, classes, side, seed=1)
    write_idx(folder / f"train-images-idx3-ubyte{ext}", xtr)
    write_idx(folder / f"train-labels-idx1-ubyte{ext}", ytr)
    write_idx(folder / f"t10k-images-idx3-ubyte{ext}", xte)
    write_idx(folder / f"t10k-labels-idx1-ubyte{ext}", yte)
    return folder


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory):
    """A tiny MNIST-format dataset (8x8 images, 10 classes) in IDX files."""
    return write_idx_dataset(tmp_path_factory.mktemp("idx"))


@pytest.fixture(autouse=True)
def _isolated_data_cache(tmp_path, monkeypatch):
    # Tests never read or fill the user's real cache.
    monkeypatch.setenv("SGRAD_DATA", str(tmp_path / "sgrad-data"))


def preempt_when_checkpointed(run_dir: Path) -> None:
    """SIGTERM this process as soon as the run in `run_dir` has written a checkpoint, as a cluster would."""
    import signal
    import threading
    import time

    def watch():
        while not list((run_dir / "checkpoints").glob("*/commit_success.txt")):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True).start()


def stop_inside_a_chunk(setattr, after: int) -> None:
    """Dispatch one step at a time (each dispatch a few seconds of a slow network's work, in miniature) and send
    this process SIGTERM once, when `after` dispatches have been issued. `setattr`: pytest's monkeypatch.setattr,
    or the builtin in a test program."""
    import signal

    from sgrad.run import pacing
    setattr(pacing, "DISPATCH_SECONDS", 0.0)
    issue = pacing.Pacer.dispatched
    issued = []

    def dispatched(self, *args):
        issue(self, *args)
        issued.append(args)
        if len(issued) == after:
            os.kill(os.getpid(), signal.SIGTERM)
    setattr(pacing.Pacer, "dispatched", dispatched)


def final_checkpoint(run: Path):
    """(step, tree) of the newest checkpoint of a run dir."""
    import orbax.checkpoint as ocp
    step = max(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    return step, ocp.StandardCheckpointer().restore((run / "checkpoints" / str(step) / "default").absolute())


def assert_same_run(run: Path, ref: Path) -> None:
    """The same logged curve (wall-clock rates aside) and, bit for bit, the same final checkpoint."""
    import jax
    from sgrad.run.metrics import read_jsonl
    drop = lambda rows: [{k: v for k, v in r.items() if not k.startswith("watch/perf/")} for r in rows]
    assert drop(read_jsonl(run / "metrics.jsonl")) == drop(read_jsonl(ref / "metrics.jsonl"))
    (step, got), (ref_step, want) = final_checkpoint(run), final_checkpoint(ref)
    assert step == ref_step
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# The rules are written once for any module; a property checked on the FCN in the fast tier is checked on the CNN
# (its convolutions and conv SG models, slower to compile) in the slow tier.
MODELS = ["fcn", pytest.param("cnn", marks=pytest.mark.slow)]
