"""The choice of XLA:CPU's convolution library (sgrad/devices/conv_library.py): it finds a program's convolutions
wherever they sit, takes the one measured faster (once per set of convolutions), and can be pinned."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgrad.devices import conv_library
from sgrad.models.convolution import conv


def _train_loop(params, x):
    layer = nn.Conv(4, (3, 3), padding="SAME", conv_general_dilated=conv)

    def body(_, p):
        return jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(lambda p: jnp.sum(layer.apply(p, x) ** 2))(p))
    return jax.lax.fori_loop(0, 2, body, params)


def _inputs():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    return nn.Conv(4, (3, 3)).init(jax.random.key(1), x), x


def test_it_finds_the_convolutions_inside_loops_and_gradients():
    params, x = _inputs()
    convs = conv_library.convolutions(jax.make_jaxpr(_train_loop)(params, x).jaxpr)
    # the forward pass, the input's and the kernel's gradients: three different convolutions
    shapes = sorted(tuple(s.shape for s in c[1]) for c in convs.values())
    assert shapes == sorted([((2, 6, 6, 3), (3, 3, 3, 4)), ((2, 6, 6, 4), (3, 3, 4, 3)),
                             ((3, 6, 6, 2), (6, 6, 2, 4))])
    assert conv_library.convolutions(jax.make_jaxpr(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((3, 3)))) == {}


@pytest.mark.parametrize("eigen_ms, ynn_ms, chosen", [(5.0, 10.0, "eigen"), (9.5, 10.0, "ynnpack"),
                                                      (12.0, 10.0, "ynnpack")])
def test_eigen_is_taken_only_when_clearly_faster_and_measured_once(monkeypatch, eigen_ms, ynn_ms, chosen):
    monkeypatch.delenv("SGRAD_CPU_CONV", raising=False)
    monkeypatch.setattr(conv_library, "_CHOSEN", {})
    calls = []

    def fake_time(primitive, shapes, params, options):
        calls.append(options)
        return 1e-3 * (eigen_ms if options == conv_library.EIGEN else ynn_ms)
    monkeypatch.setattr(conv_library, "_time", fake_time)
    params, x = _inputs()
    want = conv_library.EIGEN if chosen == "eigen" else None
    assert conv_library.compiler_options(_train_loop, params, x) == want
    assert len(calls) == 6  # three convolutions, each both ways
    assert conv_library.compiler_options(_train_loop, params, x) == want
    assert len(calls) == 6  # the same convolutions again: not measured again


def test_the_choice_can_be_pinned_and_a_program_without_convolutions_keeps_xlas_defaults(monkeypatch):
    params, x = _inputs()
    monkeypatch.setenv("SGRAD_CPU_CONV", "eigen")
    assert conv_library.compiler_options(_train_loop, params, x) == conv_library.EIGEN
    monkeypatch.setenv("SGRAD_CPU_CONV", "ynnpack")
    assert conv_library.compiler_options(_train_loop, params, x) is None
    monkeypatch.setenv("SGRAD_CPU_CONV", "eigen")
    assert conv_library.compiler_options(lambda a: a @ a, jnp.ones((4, 4))) is None


def test_the_measured_options_compile_and_give_the_same_result(monkeypatch):
    """XLA accepts the options (a misspelt fusion type fails compilation), and both libraries agree."""
    params, x = _inputs()
    out = {}
    for library in ("eigen", "ynnpack"):
        monkeypatch.setenv("SGRAD_CPU_CONV", library)
        out[library] = conv_library.jit(_train_loop)(params, x)
    for a, b in zip(jax.tree.leaves(out["eigen"]), jax.tree.leaves(out["ynnpack"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_real_measurement_picks_a_library_and_says_which(monkeypatch, caplog):
    monkeypatch.delenv("SGRAD_CPU_CONV")
    monkeypatch.setattr(conv_library, "_CHOSEN", {})
    params, x = _inputs()
    with caplog.at_level("INFO", logger="sgrad"):
        options = conv_library.compiler_options(_train_loop, params, x)
    assert options in (None, conv_library.EIGEN)
    assert conv_library.chosen() == ["eigen" if options else "ynnpack"]
    assert "convolutions on XLA:CPU: " + ("Eigen" if options else "YNNPACK") + " (3 of them" in caplog.text
