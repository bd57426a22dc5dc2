"""sgrad's convolution (sgrad/models/convolution.py) is flax.linen.Conv: the same forward pass and the same
gradients for the input and the kernel, and, inside a compiled loop, every convolution it produces is in the
canonical layout XLA:CPU runs on its fast path (the reason it exists)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgrad.models.cnn import ConvBlock
from sgrad.models.convolution import conv


@pytest.mark.parametrize("shape, kernel, features, padding, strides", [
    ((2, 9, 7, 3), 5, 4, "SAME", 1),        # the paper's 5x5, odd sizes
    ((2, 8, 8, 5), 3, 6, "VALID", 1),
    ((1, 6, 6, 2), 1, 3, "SAME", 1),         # the synthetic input model's 1x1
    ((2, 7, 9, 3), 4, 2, ((1, 2), (0, 3)), 1),  # even kernel, uneven explicit padding
    ((2, 9, 9, 3), 3, 4, "SAME", 2),         # strided: lax's own rules
    ((3, 4, 4, 6), 5, 5, "SAME", 1),         # kernel larger than the input: windows x matmul
    ((2, 3, 5, 2), 4, 3, ((2, 1), (1, 2)), 1),
])
def test_forward_and_gradients_equal_flax_conv(shape, kernel, features, padding, strides):
    x = jax.random.normal(jax.random.key(0), shape)
    ref = nn.Conv(features, (kernel, kernel), strides=strides, padding=padding)
    mine = nn.Conv(features, (kernel, kernel), strides=strides, padding=padding, conv_general_dilated=conv)
    params = ref.init(jax.random.key(1), x)
    y = ref.apply(params, x)
    np.testing.assert_allclose(mine.apply(params, x), y, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(jax.random.key(2), y.shape)  # a cotangent that is not all ones
    want = jax.vjp(lambda p, x: ref.apply(p, x), params, x)[1](g)
    got = jax.vjp(lambda p, x: mine.apply(p, x), params, x)[1](g)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        assert float(jnp.abs(b).sum()) > 0


def test_the_custom_gradient_is_the_one_used():
    x = jnp.ones((2, 6, 6, 3))
    mine = nn.Conv(4, (3, 3), padding="SAME", conv_general_dilated=conv)
    params = mine.init(jax.random.key(0), x)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: mine.apply(p, x).sum()))(params))
    assert "custom_vjp" in jaxpr


@pytest.mark.parametrize("size", [12, 4])  # 4: the kernel is larger than the input
def test_every_convolution_of_a_conv_block_trained_in_a_compiled_loop_is_canonical(size):
    """XLA:CPU runs a convolution fast only in the NHWC x HWIO -> NHWC layout; inside a while loop it does not
    rewrite others into it (lax's weight gradient is `f01b_i01o->01bf`), and those ran ~100x slower; a kernel
    larger than its input has its operands swapped by XLA, into `01fb_o01i->f01b`, as slow."""
    block = ConvBlock(8, kernel=5, max_pool=True)
    x = jax.random.normal(jax.random.key(0), (4, size, size, 3))
    variables = block.init(jax.random.key(1), x, False)

    def loss(params, x):
        out, _ = block.apply({**variables, "params": params}, x, True, mutable=["batch_stats"])
        return jnp.sum(out ** 2)

    def steps(params):
        return jax.lax.fori_loop(0, 3, lambda _, p: jax.tree.map(lambda a, g: a - 1e-3 * g, p,
                                                                   jax.grad(loss)(p, x)), params)
    hlo = jax.jit(steps).lower(variables["params"]).compile().as_text()
    labels = re.findall(r"convolution\([^)]*\).*?dim_labels=(\S+?),", hlo)
    if size > 5:
        assert len(labels) >= 2  # the forward pass and the kernel's gradient (the input needs none)
    assert set(labels) <= {"b01f_01io->b01f"}, labels
