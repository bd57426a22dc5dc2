"""Max pooling by strided slices (sgrad/models/pooling.py) is flax's max pooling: the same forward pass and the
same gradient (the first maximum of a window gets it, as XLA's select_and_scatter gives it), on its own and
inside the paper's conv block."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgrad.models import pooling
from sgrad.models.cnn import ConvBlock


def _flax(x, window, stride):
    return nn.max_pool(x, (window, window), (stride, stride), padding="SAME")


@pytest.mark.parametrize("shape, window, stride", [((2, 8, 8, 3), 3, 2), ((2, 7, 9, 4), 3, 2), ((3, 8, 8, 2), 2, 2),
                                                   ((1, 5, 5, 1), 3, 1)])
def test_slices_equal_flax_forward_and_gradient_with_ties(shape, window, stride):
    x = jnp.round(jax.random.normal(jax.random.key(0), shape) * 2) / 2  # many ties inside windows
    mine = lambda x: pooling.max_pool_slices(x, window, stride)
    ref = lambda x: _flax(x, window, stride)
    assert jnp.array_equal(mine(x), ref(x))
    g = jax.random.normal(jax.random.key(1), ref(x).shape)
    got, want = jax.vjp(mine, x)[1](g)[0], jax.vjp(ref, x)[1](g)[0]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert float(jnp.abs(want).sum()) > 0


def test_the_conv_block_trains_the_same_with_either_pooling(monkeypatch):
    block = ConvBlock(8, kernel=3, max_pool=True)
    x = jax.random.normal(jax.random.key(0), (4, 10, 10, 3))
    variables = block.init(jax.random.key(1), x, False)

    def loss(params, x):
        out, _ = block.apply({**variables, "params": params}, x, True, mutable=["batch_stats"])
        return jnp.sum(out * jnp.arange(out.size).reshape(out.shape) / out.size)
    results = {}
    for way in ("native", "slices"):
        monkeypatch.setenv("SGRAD_MAX_POOL", way)
        results[way] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(variables["params"], x)
    (l_native, g_native), (l_slices, g_slices) = results["native"], results["slices"]
    np.testing.assert_allclose(l_native, l_slices, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_native), jax.tree.leaves(g_slices)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # overlapping windows: another summation order


def test_the_way_is_measured_once_per_shape_and_can_be_pinned(monkeypatch):
    monkeypatch.delenv("SGRAD_MAX_POOL", raising=False)
    monkeypatch.setattr(pooling, "_CHOSEN", {})
    way = pooling.lowering((2, 16, 16, 4), jnp.float32, 3, 2)
    assert way in ("native", "slices") and len(pooling._CHOSEN) == 1
    pooling._CHOSEN[next(iter(pooling._CHOSEN))] = "measured earlier"
    assert pooling.lowering((2, 16, 16, 4), jnp.float32, 3, 2) == "measured earlier"  # not timed again
    monkeypatch.setenv("SGRAD_MAX_POOL", "native")
    assert pooling.lowering((2, 16, 16, 4), jnp.float32, 3, 2) == "native"
