"""Which library XLA:CPU runs a program's convolutions with: chosen by timing them on this machine.

XLA:CPU hands convolutions, dots and reductions to YNNPACK by default (its `xla_cpu_experimental_ynn_fusion_type`
option). On a 2-core Xeon that ran the paper's CNN's 5x5 convolutions up to 3x slower than XLA's own (Eigen)
convolutions (results/bench/conv_profile.md: the 128 -> 128 weight gradient 119 ms against 54 ms, the 3 -> 128
forward 25 ms against 7 ms) and the CNN's training step 1.5x slower. Which is faster depends on the CPU and the
shapes, so `jit` times the program's own convolutions both ways at its first call and compiles the program with
the faster; dots and reductions stay with YNNPACK either way. Other backends compile exactly as `jax.jit` does.
SGRAD_CPU_CONV=eigen|ynnpack pins the choice (benchmarks, tests).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from sgrad.models.partition import seconds

log = logging.getLogger("sgrad")

# XLA's default YNNPACK fusion types less INDIVIDUAL_CONVOLUTION: convolutions go to XLA's Eigen path.
EIGEN = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
_CLEARLY = 0.9  # Eigen must take less than this fraction of YNNPACK's time on the program's convolutions
# The program's convolutions (shapes and settings) -> "eigen" | "ynnpack": measured once per process.
_CHOSEN: dict[tuple, str] = {}


def jit(fn: Callable, **jit_kwargs) -> Callable:
    """`jax.jit(fn, **jit_kwargs)`, compiled with the faster convolution library here (decided at the first
    call, from the arguments' shapes). Like a jitted function it has `lower(*args)` (XLA's cost and memory
    analyses of the program it runs)."""
    compiled = None

    def jitted(*args):
        nonlocal compiled
        if compiled is None:
            compiled = jax.jit(fn, compiler_options=compiler_options(fn, *args), **jit_kwargs)
        return compiled

    @functools.wraps(fn)
    def call(*args):
        return jitted(*args)(*args)
    call.lower = lambda *args: jitted(*args).lower(*args)
    return call


def compiler_options(fn: Callable, *args) -> dict | None:
    """The compile options for fn(*args): EIGEN or None (XLA's defaults)."""
    if jax.default_backend() != "cpu":
        return None
    # Traced as jax.jit traces it: the jit that then compiles fn (with these options or none) reuses this trace
    # from JAX's cache instead of tracing fn a second time (half a second for a decoupled network's chunk).
    convs = convolutions(jax.jit(fn).trace(*args).jaxpr.jaxpr)
    if not convs:
        return None
    return EIGEN if library(convs) == "eigen" else None


def library(convs: dict) -> str:
    """"eigen" or "ynnpack" for a program with these convolutions; process 0 decides for every process of a
    jax.distributed run (one SPMD program, one set of options)."""
    pinned = os.environ.get("SGRAD_CPU_CONV")
    if pinned in ("eigen", "ynnpack"):
        return pinned
    key = tuple(sorted(convs))
    if key not in _CHOSEN:
        eigen = np.int32(0)
        if jax.process_index() == 0:
            t_ynn = t_eigen = 0.0
            for c in convs.values():  # both ways convolution by convolution, so the machine's drift hits both
                t_ynn += _time(*c, None)
                t_eigen += _time(*c, EIGEN)
            eigen = np.int32(t_eigen < _CLEARLY * t_ynn)
            log.info("convolutions on XLA:CPU: %s (%d of them: %.1f ms with Eigen, %.1f ms with YNNPACK)",
                     "Eigen" if eigen else "YNNPACK", len(convs), 1e3 * t_eigen, 1e3 * t_ynn)
        if jax.process_count() > 1:
            eigen = multihost_utils.broadcast_one_to_all(eigen)
        _CHOSEN[key] = "eigen" if int(eigen) else "ynnpack"
    return _CHOSEN[key]


def chosen() -> list[str]:
    """The libraries measured faster so far in this process (one per set of convolutions)."""
    return sorted(set(_CHOSEN.values()))


def convolutions(jaxpr) -> dict[str, tuple]:
    """Every distinct convolution in a jaxpr and the jaxprs inside it (loops, shard_map, custom VJPs):
    description -> (primitive, operand shapes, params)."""
    found = {}
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            shapes = tuple(jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars)
            described = repr((tuple((s.shape, str(s.dtype)) for s in shapes), sorted(eqn.params.items())))
            found[described] = (eqn.primitive, shapes, eqn.params)
        for sub in _sub_jaxprs(eqn.params):
            found.update(convolutions(sub))
    return found


def _sub_jaxprs(params: dict):
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(v, "eqns"):
                yield v
            elif hasattr(getattr(v, "jaxpr", None), "eqns"):
                yield v.jaxpr


def _time(primitive, shapes, params, options) -> float:
    return seconds(lambda *ops: primitive.bind(*ops, **params), *shapes, compiler_options=options)
