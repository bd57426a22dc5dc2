"""Assemble a dni.Network from config and initialise its variables (params and batch stats)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sgrad.core.dni import Network, apply_module
from sgrad.config import Mode
from sgrad.models import build_modules
from sgrad.models.auxiliary import build_aux_classifier
from sgrad.models.synthetic import build_sg_model
from sgrad.models.synthetic_input import build_input_model


def build_network(cfg, input_shape: tuple[int, ...], num_classes: int) -> Network:
    """Modules from `cfg.model`; per interface an SG model (SG modes) or an auxiliary classifier (dgl)."""
    modules = build_modules(cfg.model, num_classes)
    mode = Mode(cfg.mode)
    if mode.greedy:
        heads = tuple(build_aux_classifier(cfg.aux, num_classes) for _ in modules[:-1])
        return Network(modules, heads, num_classes, mode)
    if not mode.synthetic:
        return Network(modules, (), num_classes, mode)
    sg_models, input_models = [], []
    h = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    for f in modules[:-1]:
        variables = jax.eval_shape(lambda x, f=f: f.init(jax.random.key(0), x, False), h)
        h = jax.eval_shape(lambda v, x, f=f: f.apply(v, x, False), variables, h)
        sg_models.append(build_sg_model(cfg.sg, len(h.shape)))
        if mode.synthetic_inputs:
            input_models.append(build_input_model(cfg.si, h.shape[1:]))
    return Network(modules, tuple(sg_models), num_classes, mode, input_models=tuple(input_models))


def init_variables(net: Network, key: jax.Array, x: jnp.ndarray) -> tuple[dict, dict]:
    """Params and batch stats as {"modules": (per module), "sg": (per interface), "si": (input models)}."""
    keys = jax.random.split(key, 2 * len(net.modules))
    params, stats, acts = [], [], []
    h = x
    for f, k in zip(net.modules, keys):
        v = f.init(k, h, False)
        params.append(v["params"])
        stats.append(v.get("batch_stats", {}))
        h, _ = apply_module(f, v["params"], stats[-1], h, False)
        acts.append(h)
    label = jnp.zeros((x.shape[0], net.num_classes), jnp.float32) if net.conditioned else None
    sg_params, sg_stats = [], []
    for m, h, k in zip(net.sg_models, acts, keys[len(net.modules):]):
        v = m.init(k, h, label, False)
        sg_params.append(v["params"])
        sg_stats.append(v.get("batch_stats", {}))
    si_params, si_stats = [], []
    for m, k in zip(net.input_models, jax.random.split(keys[-1], max(len(net.input_models), 1))):
        v = m.init(k, x, False)
        si_params.append(v["params"])
        si_stats.append(v.get("batch_stats", {}))
    return ({"modules": tuple(params), "sg": tuple(sg_params), "si": tuple(si_params)},
            {"modules": tuple(stats), "sg": tuple(sg_stats), "si": tuple(si_stats)})
