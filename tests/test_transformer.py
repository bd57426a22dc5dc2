"""model=transformer: the decoupled rule on a causal Transformer's blocks (oracle SG = backprop, SG targets, zero
init), position by position for the SG models and DGL heads, and runs on text that learn."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import composed_loss, make_cfg, randomized_interface
from sgrad.config import ConfigError
from sgrad.core import dni
from sgrad.core.step import create_state, make_train_step
from sgrad.models.network import apply, init_variables
from sgrad.run import train_and_evaluate
from sgrad.run.build import build_network, build_train_optimizer, check

B, T, V = 8, 12, 11


def _setup(mode="dni", *extra, randomize_sg=False, seed=0):
    cfg = make_cfg("dataset=text", "model=transformer", f"mode={mode}", "model.layers=3", "model.width=16",
                   "model.heads=2", f"model.context={T}", "sg.width=16", "sg.hidden_layers=1", "aux.hidden_layers=0",
                   *extra)
    net = build_network(cfg, (T,), V)
    kx, ky, kp, ks = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.randint(kx, (B, T), 0, V)
    y = jax.random.randint(ky, (B, T), 0, V)
    params, stats = init_variables(net, kp, x, y)
    if randomize_sg:
        params = randomized_interface(params, ks)
    return cfg, net, params, stats, x, y


_full_loss = composed_loss


def _allclose(a, b, **kw):
    kw = {"rtol": 1e-4, "atol": 1e-6, **kw}
    jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), **kw), a, b)


@pytest.mark.slow  # the fast tier checks the rule itself on the FCN (tests/test_dni.py)
def test_oracle_synthetic_gradient_gives_the_backprop_update():
    _, net, params, stats, x, y = _setup()

    @jax.jit  # one program each, not op by op: a Transformer's eager gradient takes seconds
    def both(params):
        fwd = dni.forward(net.modules, params["modules"], stats["modules"], x)
        eps = [jnp.zeros_like(h) for h in fwd.activations[:-1]]
        # B * dL/dh_i: the rule's units (the per-example loss summed over the batch)
        oracle = [g * B for g in jax.grad(lambda e: _full_loss(net, params["modules"], stats, x, y, e))(eps)]
        _, top = dni.loss_and_top_gradient(fwd.activations[-1], y)
        grads, targets = dni.decoupled_module_grads(fwd, oracle, top)
        expected = jax.grad(lambda p: _full_loss(net, p, stats, x, y))(params["modules"])
        return grads, expected, targets, oracle

    grads, expected, targets, oracle = both(params)
    assert [t.shape for t in targets] == [(B, T, 16)] * 2
    _allclose(grads, expected)
    _allclose(targets, tuple(oracle))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dni", "cdni"])
def test_sg_target_is_the_vjp_of_the_block_above_at_its_own_synthetic_gradient(mode):
    _, net, params, stats, x, y = _setup(mode, randomize_sg=True)
    fwd = dni.forward(net.modules, params["modules"], stats["modules"], x)
    _, top = dni.loss_and_top_gradient(fwd.activations[-1], y)
    pred = dni.predict_synthetic(net, params["interface"], stats["interface"], fwd.activations, y)
    _, targets = dni.decoupled_module_grads(fwd, pred.gradients, top)
    k = len(net.modules)
    for i in range(k - 1):
        f, p, s = net.modules[i + 1], params["modules"][i + 1], stats["modules"][i + 1]
        _, vjp = jax.vjp(lambda h: apply(f, p, s, (h,), True)[0], fwd.activations[i])
        (expected,) = vjp(pred.gradients[i + 1] if i + 1 < k - 1 else top)
        _allclose(targets[i], expected)
        assert float(jnp.abs(expected).sum()) > 0


@pytest.mark.slow  # the fast tier checks the rule itself on the FCN (tests/test_dni.py)
def test_zero_initialised_sg_gives_zero_first_updates_below_it():
    cfg, net, params, stats, x, y = _setup()
    tx = build_train_optimizer(cfg, 100)
    new, _ = jax.jit(make_train_step(net, tx))(create_state(params, stats, tx), x, y)
    for before, after in zip(params["modules"][:-1], new.params["modules"][:-1]):
        _allclose(after, before, rtol=0, atol=0)
    assert any(not np.array_equal(u, v) for u, v in
               zip(jax.tree.leaves(params["modules"][-1]), jax.tree.leaves(new.params["modules"][-1])))


@pytest.mark.slow  # the fast tier checks the rule itself on the FCN (tests/test_dni.py)
def test_cdni_sg_model_reads_the_label_of_its_own_position_only():
    # Without batch norm: its batch statistics would tie every position's prediction to every other's labels.
    _, net, params, stats, x, y = _setup("cdni", "sg.batch_norm=false", randomize_sg=True)
    fwd = dni.forward(net.modules, params["modules"], stats["modules"], x)
    g = lambda labels: dni.predict_synthetic(net, params["interface"], stats["interface"], fwd.activations,
                                             labels).gradients[0]
    changed = jnp.abs(g(y.at[:, 5].set((y[:, 5] + 1) % V)) - g(y)).max(axis=(0, 2))
    assert float(changed[5]) > 0
    np.testing.assert_array_equal(np.asarray(changed.at[5].set(0)), 0)


def _prefix_outputs(fn, x, t):
    """fn's outputs at positions <= t, and again after every token after t is replaced."""
    other = x.at[:, t + 1:].set((x[:, t + 1:] + 3) % V)
    return fn(x)[:, :t + 1], fn(other)[:, :t + 1], fn(other)[:, t + 1:] - fn(x)[:, t + 1:]


@pytest.mark.slow  # 9 s of compiling, for a property of the network rather than of a mode
def test_the_network_and_its_dgl_heads_never_read_a_later_token():
    _, net, params, stats, x, y = _setup("dgl")
    out = lambda x: dni.predict(net, params, stats, x)
    a, b, later = _prefix_outputs(out, x, 4)
    _allclose(a, b, rtol=0, atol=1e-6)
    assert float(jnp.abs(later).max()) > 1e-3  # the check can fail: later positions do change

    def head(x):
        h = dni.forward(net.modules, params["modules"], stats["modules"], x).activations[0]
        return apply(net.interface_models[0], params["interface"][0], stats["interface"][0], (h, None), False)[0]
    a, b, later = _prefix_outputs(head, x, 4)
    assert a.shape[-1] == V
    _allclose(a, b, rtol=0, atol=1e-6)
    assert float(jnp.abs(later).max()) > 1e-3


@pytest.mark.parametrize("overrides, key", [
    (["model=transformer"], "dataset.name"),
    (["dataset=text", "model=transformer", "model.heads=3"], "model.heads"),
    (["dataset=text", "model=transformer", "trainer.bptt=5"], "trainer.bptt"),
    (["dataset=text", "model=transformer", "mode=dni_full"], "mode"),
])
def test_transformer_settings_are_checked(overrides, key):
    with pytest.raises(ConfigError, match=key):
        check(make_cfg(*overrides))


def _pattern_corpus(n=6000, seed=0):
    """A text the test makes: words from a tiny vocabulary, each followed by its fixed successor, so the next
    character is predictable from the last few (chance: log2(vocab) bits)."""
    words = ["abc ", "bcd ", "cdea ", "eab "]
    rng = np.random.default_rng(seed)
    text, w = [], 0
    while sum(map(len, text)) < n:
        text.append(words[w])
        w = (w + 1 + (rng.random() < 0.2)) % len(words)
    ids = np.frombuffer("".join(text).encode("utf-32-le"), np.uint32)
    vocab = np.unique(ids)
    mapped = np.searchsorted(vocab, ids).astype(np.int32)
    cut = [int(len(mapped) * 0.8), int(len(mapped) * 0.9)]
    return {"train": mapped[:cut[0]], "valid": mapped[cut[0]:cut[1]], "test": mapped[cut[1]:],
            "vocab": np.array([chr(c) for c in vocab])}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dni", "cdni", "dgl"])  # what is the Transformer's own: per-position SG and heads
def test_the_position_wise_modes_learn_the_pattern_text(mode, tmp_path):
    corpus = _pattern_corpus()
    cfg = make_cfg("dataset=text", "model=transformer", f"mode={mode}", "model.layers=2", "model.heads=2",
                   "model.context=16", "sg.hidden_layers=0", "trainer.steps=150", "trainer.eval_every=150")
    summary = train_and_evaluate(cfg, tmp_path, text=corpus)
    chance = np.log2(len(corpus["vocab"]))
    assert summary["status"] == "completed"
    # DNI's per-position SG carries the least signal of the three (results/decoupled/transformer/): a margin that
    # all clear, far below chance.
    assert summary["valid/bpc"] < 0.75 * chance, (mode, summary["valid/bpc"], chance)


FORTUNES = Path("/usr/share/games/fortunes")


@pytest.mark.slow
@pytest.mark.skipif(not FORTUNES.is_dir(), reason="Debian's fortunes package is not installed")
def test_the_preset_learns_real_text_in_dni(tmp_path):
    from sgrad.config.compose import compose_config
    cfg = compose_config("+exp=text_transformer", "mode=dni", "model.layers=2", "model.width=64", "model.context=32",
                         "trainer.steps=150", "trainer.eval_every=150", "optim.warmup_steps=20",
                         "trainer.progress=false")
    summary = train_and_evaluate(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["modules"] == 2
    # Uniform over ~110 symbols is 6.8 bits; 150 steps reach about 4.55 (300 steps about 4.3).
    assert summary["valid/bpc"] < 4.8, summary["valid/bpc"]
