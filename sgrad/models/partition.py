"""Where the module boundaries go: every `model.dni_every` layers, or balanced by estimated or measured cost.

A pipeline runs at the pace of its slowest stage, so `model.partition=balanced` cuts the layers into
`model.modules` contiguous modules whose largest cost is smallest, the way pipeline systems such as GPipe and
PipeDream balance stages. A module's cost is one training step of its layers (forward and VJP) plus, below the
top, the interface model on its output (SG model or auxiliary classifier: its prediction, and for an SG model
its regression too), at the run's batch size. `balanced` estimates it from XLA's FLOP count (the same on every
machine); `profiled` times it on the device, as PipeDream's profiler does: FLOPs miss what memory-bound ops
(batch norm, activations, optimizer updates) cost, which on CPU moved the best split of an 8-layer FCN.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def flops(fn: Callable, *args) -> float:
    """XLA's FLOP count of fn(*args) (args may be shapes)."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def seconds(fn: Callable, *args, repeats: int = 5, compiler_options: dict | None = None) -> float:
    """Measured seconds of fn(*args) on the default device: the median of `repeats` calls after one that compiles
    (args may be shapes: zeros of them are used)."""
    args = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype) if isinstance(a, jax.ShapeDtypeStruct) else a, args)
    compiled = jax.jit(fn, compiler_options=compiler_options)
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def layer_costs(layers: Sequence[nn.Module], x: jax.ShapeDtypeStruct, cost: Callable = flops
                ) -> tuple[list[float], list[jax.ShapeDtypeStruct]]:
    """The cost (`flops` or `seconds`) of one training step of each layer (forward + VJP), and each layer's
    output shape. Layers alike (same definition, same input) are costed once, so that measurement noise cannot
    tell them apart."""
    costs, outs, h, seen = [], [], x, {}
    for j, layer in enumerate(layers):
        variables = jax.eval_shape(lambda h, layer=layer: layer.init(jax.random.key(0), h, False), h)

        def step(v, h, layer=layer, first=j == 0):
            apply = lambda p, h: layer.apply({**v, "params": p}, h, True, mutable=["batch_stats"])[0]
            if first:  # nothing uses the gradient w.r.t. the data (a third of a wide input layer's VJP)
                out, vjp = jax.vjp(lambda p: apply(p, h), v["params"])
            else:
                out, vjp = jax.vjp(apply, v["params"], h)
            return vjp(jnp.ones_like(out))
        key = (repr(layer), h.shape, j == 0)
        if key not in seen:
            seen[key] = cost(step, variables, h)
        costs.append(seen[key])
        h = jax.eval_shape(lambda v, h, layer=layer: layer.apply(v, h, False), variables, h)
        outs.append(h)
    return costs, outs


def interface_cost(model: nn.Module | None, h: jax.ShapeDtypeStruct, label, trains_by_regression: bool,
                   cost: Callable = flops) -> tuple[float, float]:
    """The cost of the interface model's work on activation h in one step, as (its prediction, its regression):
    an SG model's ĝ for the module, and its regression step on an older activation (whose target arrives
    later); an auxiliary classifier's forward and VJP, all of it in the first."""
    if model is None:
        return 0.0, 0.0
    variables = jax.eval_shape(lambda h, y: model.init(jax.random.key(0), h, y, False), h, label)
    apply = lambda p, v, h, y: model.apply({**v, "params": p}, h, y, True, mutable=["batch_stats"])[0]

    def predict(v, h, y):
        out, vjp = jax.vjp(lambda p, h: apply(p, v, h, y), v["params"], h)
        # ĝ alone; an auxiliary classifier's loss also takes its VJP (w.r.t. params and h)
        return vjp(jnp.ones_like(out)) if not trains_by_regression else out

    def regress(v, older, y):  # a forward and the VJP w.r.t. the parameters only
        again, vjp_params = jax.vjp(lambda p: apply(p, v, older, y), v["params"])
        return vjp_params(again)
    # Costed apart: on one h, XLA would share the two forwards and the cost would miss a third of the work.
    return cost(predict, variables, h, label), cost(regress, variables, h, label) if trains_by_regression else 0.0


def balanced_sizes(costs: Sequence[float], interface: Sequence[float], modules: int,
                   handed_up: Sequence[float] | None = None, first_share: float = 0.0) -> tuple[int, ...]:
    """Layer counts of `modules` contiguous modules minimising the largest module cost; `interface[j]` is the
    cost added to a module that ends after layer j (the top module adds none), `handed_up[j]` the cost added to
    the module that starts after layer j (the share of the SG model's regression that the device above does,
    `sg_share`); `first_share` of the first module's cost moves to the second (its copy on device 1)."""
    n = len(costs)
    handed_up = handed_up or [0.0] * n
    cost = lambda a, b: sum(costs[a:b]) + (interface[b - 1] if b < n else 0.0) + (handed_up[a - 1] if a else 0.0)
    best, best_sizes = float("inf"), None
    for cuts in itertools.combinations(range(1, n), modules - 1):
        bounds = (0, *cuts, n)
        spans = list(zip(bounds, bounds[1:]))
        first = cost(*spans[0])
        worst = max([(1 - first_share) * first] +
                    [cost(a, b) + (first_share * first if j == 1 else 0.0) for j, (a, b) in enumerate(spans) if j])
        if worst < best:
            best, best_sizes = worst, tuple(b - a for a, b in spans)
    return best_sizes


def even_sizes(n: int, every: int) -> tuple[int, ...]:
    """`every` layers per module, the last module holding the remainder."""
    return tuple(min(every, n - i) for i in range(0, n, every))
