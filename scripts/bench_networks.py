"""What sgrad's benchmarks time: the paper's networks (or a preset) in a mode, composed by Hydra as `sgrad-train`
composes them, built and initialised through the library (`sgrad.decouple(...).init`), on random data kept on
the device.

A row is named by its mode and any overrides it adds, `MODE[:KEY=VALUE[:KEY=VALUE...]]`: `dni:sg.hidden_layers=0`
is DNI with a linear SG model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sgrad.config.compose import compose_config
from sgrad.devices.chunk import preprocess
from sgrad.run.build import build_decoupled


def spec_overrides(spec: str) -> list[str]:
    """`dni:sg.hidden_layers=0` -> ["mode=dni", "sg.hidden_layers=0"]."""
    mode, *extra = spec.split(":")
    return [f"mode={mode}", *extra]


def paper_cfg(model: str, layers: int, spec: str, batch: int, width: int | None = None):
    """The paper's settings for one row of a table (`spec`: a mode and its overrides, as above); `width`: the
    FCN's hidden width (the paper's 256 by default)."""
    wide = [f"model.width={width}"] if width else []
    return compose_config(*spec_overrides(spec), f"model.name={model}", f"model.layers={layers}",
                          f"trainer.batch_size={batch}", "optim.schedule=constant", "sg.optim.schedule=constant",
                          *wide)


def exp_cfg(exp: str, spec: str):
    """A preset composed by Hydra exactly as `sgrad-train +exp=EXP mode=MODE [overrides]` composes it."""
    return compose_config(f"+exp={exp}", *spec_overrides(spec))


TOKENS = 113  # the vocabulary of Debian's fortunes text (what +exp=text_transformer trains on)


def setup(cfg, examples: int = 8192):
    """The decoupled network, random data on the device (uint8 images, or token windows for a Transformer) and the
    initial state: what every row starts from.

    Returns (network, optimizers, state, input shape, xs, ys, idx [log_every, batch], (mean, std), settings)."""
    model = str(cfg.model.name)
    batch = cfg.trainer.batch_size
    rng = np.random.default_rng(0)
    if model == "transformer":  # windows of random token ids over a character-sized vocabulary
        shape, classes = (cfg.model.context,), TOKENS
        xs = jax.device_put(rng.integers(0, classes, (examples, *shape)).astype(np.int32))
        ys = jax.device_put(rng.integers(0, classes, (examples, *shape)).astype(np.int32))
        mean, std = jnp.zeros(1), jnp.ones(1)
    else:
        shape, classes = (32, 32, 3) if model == "cnn" else (28, 28, 1), 10
        xs = jax.device_put(rng.integers(0, 256, (examples, *shape), dtype=np.uint8))
        ys = jax.device_put(rng.integers(0, classes, examples).astype(np.int32))
        mean, std = jnp.full((shape[-1],), 0.5), jnp.full((shape[-1],), 0.25)
    decoupled = build_decoupled(cfg, shape, classes, 10_000)
    idx = rng.integers(0, examples, (cfg.trainer.log_every, batch)).astype(np.int32)
    state = decoupled.init(jax.random.key(0), preprocess(xs[:batch], mean, std), ys[:batch])
    return (decoupled.network, decoupled.tx, state, shape, xs, ys, idx, (mean, std), decoupled.settings)
