"""A decoupled network's static structure, and the one way a Flax model of it is applied or initialised.

Plain values only: the modules f_1..f_K, the model on each interface (SG model or auxiliary classifier)
and the mode's rule (`sgrad.modes`), which this layer stores but never asks about itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Network:
    """Modules f_1..f_K, the model at each interface 1..K-1 (M_i, an auxiliary classifier, or none), and the
    synthetic input models I_2..I_K of complete unlocking. Interface models take (h, label, train)."""

    modules: tuple[nn.Module, ...]
    interface_models: tuple[nn.Module, ...]
    num_classes: int
    rule: Any  # sgrad.modes.ModeRule, decided once when the network is built
    input_models: tuple[nn.Module, ...] = ()

    @property
    def conditioned(self) -> bool:
        """cDNI: M_i also sees one-hot(y)."""
        return self.rule.conditioned


def apply(model: nn.Module, params: PyTree, stats: PyTree, inputs: Sequence[Any],
          train: bool) -> tuple[jnp.ndarray, PyTree]:
    """model(*inputs, train) and its updated batch-norm statistics (unchanged when not training)."""
    variables = {"params": params, "batch_stats": stats} if stats else {"params": params}
    if not train:
        return model.apply(variables, *inputs, False), stats
    out, mutated = model.apply(variables, *inputs, True, mutable=["batch_stats"])
    return out, mutated.get("batch_stats", stats)


def _split(variables) -> tuple[PyTree, PyTree]:
    return variables["params"], variables.get("batch_stats", {})


def init_variables(net: Network, key: jax.Array, x: jnp.ndarray) -> tuple[dict, dict]:
    """Params and batch stats as {"modules": (per module), "interface": (per interface), "si": (input models)}.

    The "interface" slot holds whatever sits on the interfaces: SG models, or DGL's auxiliary classifiers.
    """
    keys = jax.random.split(key, 2 * len(net.modules))
    params, stats, acts = [], [], []
    h = x
    for f, k in zip(net.modules, keys):
        p, s = _split(f.init(k, h, False))
        params.append(p)
        stats.append(s)
        h, _ = apply(f, p, s, (h,), False)
        acts.append(h)
    label = jnp.zeros((x.shape[0], net.num_classes), jnp.float32) if net.conditioned else None
    interface = [_split(m.init(k, h, label, False))
                 for m, h, k in zip(net.interface_models, acts, keys[len(net.modules):])]
    inputs = [_split(m.init(k, x, False))
              for m, k in zip(net.input_models, jax.random.split(keys[-1], max(len(net.input_models), 1)))]
    return ({"modules": tuple(params), "interface": tuple(p for p, _ in interface), "si": tuple(p for p, _ in inputs)},
            {"modules": tuple(stats), "interface": tuple(s for _, s in interface), "si": tuple(s for _, s in inputs)})


def activation_shapes(modules: Sequence[nn.Module], input_shape: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Each module's output shape (without the batch axis) for inputs of `input_shape`, without computing."""
    h = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    shapes = []
    for f in modules:
        variables = jax.eval_shape(lambda x, f=f: f.init(jax.random.key(0), x, False), h)
        h = jax.eval_shape(lambda v, x, f=f: f.apply(v, x, False), variables, h)
        shapes.append(tuple(h.shape[1:]))
    return tuple(shapes)
