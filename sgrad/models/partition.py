"""Where the module boundaries go: every `model.dni_every` layers, or balanced by estimated cost.

A pipeline runs at the pace of its slowest stage, so `model.partition=balanced` cuts the layers into
`model.modules` contiguous modules whose largest cost is smallest, the way pipeline systems such as GPipe and
PipeDream balance stages. A module's cost is XLA's FLOP estimate of one training step of its layers (forward
and VJP) plus, below the top, the interface model on its output (SG model or auxiliary classifier: its
prediction, and for an SG model its regression too), at the run's batch size.
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def _flops(fn: Callable, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def layer_costs(layers: Sequence[nn.Module], x: jax.ShapeDtypeStruct) -> tuple[list[float], list[jax.ShapeDtypeStruct]]:
    """Estimated FLOPs of one training step of each layer (forward + VJP), and each layer's output shape."""
    costs, outs, h = [], [], x
    for layer in layers:
        variables = jax.eval_shape(lambda h, layer=layer: layer.init(jax.random.key(0), h, False), h)

        def step(v, h, layer=layer):
            out, vjp = jax.vjp(lambda p, h: layer.apply({**v, "params": p}, h, True, mutable=["batch_stats"])[0],
                               v["params"], h)
            return vjp(jnp.ones_like(out))
        costs.append(_flops(step, variables, h))
        h = jax.eval_shape(lambda v, h, layer=layer: layer.apply(v, h, False), variables, h)
        outs.append(h)
    return costs, outs


def interface_cost(model: nn.Module | None, h: jax.ShapeDtypeStruct, label, trains_by_regression: bool) -> float:
    """FLOPs of the interface model on activation h: its prediction, plus (SG models) its regression step."""
    if model is None:
        return 0.0
    variables = jax.eval_shape(lambda h, y: model.init(jax.random.key(0), h, y, False), h, label)
    predict = _flops(lambda v, h, y: model.apply(v, h, y, True, mutable=["batch_stats"])[0], variables, h, label)
    if not trains_by_regression:
        return 3.0 * predict  # one forward and its VJP (w.r.t. params and h) for the auxiliary loss
    return predict + 3.0 * predict  # ĝ for the module, then forward + VJP of the regression


def balanced_sizes(costs: Sequence[float], interface: Sequence[float], modules: int) -> tuple[int, ...]:
    """Layer counts of `modules` contiguous modules minimising the largest module cost; `interface[j]` is the
    cost added to a module that ends after layer j (the top module adds none)."""
    n = len(costs)
    best, best_sizes = float("inf"), None
    for cuts in itertools.combinations(range(1, n), modules - 1):
        bounds = (0, *cuts, n)
        worst = max(sum(costs[a:b]) + (interface[b - 1] if b < n else 0.0) for a, b in zip(bounds, bounds[1:]))
        if worst < best:
            best, best_sizes = worst, tuple(b - a for a, b in zip(bounds, bounds[1:]))
    return best_sizes


def even_sizes(n: int, every: int) -> tuple[int, ...]:
    """`every` layers per module, the last module holding the remainder."""
    return tuple(min(every, n - i) for i in range(0, n, every))
