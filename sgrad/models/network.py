"""Assemble a dni.Network from config and initialise its variables (params and batch stats)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sgrad.core.dni import Network, apply_module
from sgrad.config import Mode
from sgrad.models import build_layers, group_layers
from sgrad.models.auxiliary import build_aux_classifier
from sgrad.models.partition import balanced_sizes, even_sizes, interface_cost, layer_costs
from sgrad.models.synthetic import build_sg_model
from sgrad.models.synthetic_input import build_input_model


def _interface_model(cfg, mode: Mode, activation_ndim: int, num_classes: int):
    """The model that sits on a module's output in this mode, if any."""
    if mode.greedy:
        return build_aux_classifier(cfg.aux, num_classes)
    return build_sg_model(cfg.sg, activation_ndim) if mode.synthetic else None


def module_sizes(cfg, layers, input_shape: tuple[int, ...], num_classes: int) -> tuple[int, ...]:
    """Layers per module: every `model.dni_every`, or `model.modules` balanced by estimated cost."""
    if str(cfg.model.partition) == "even":
        return even_sizes(len(layers), cfg.model.dni_every)
    mode = Mode(cfg.mode)
    batch = cfg.trainer.batch_size
    costs, outs = layer_costs(layers, jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32))
    label = jax.ShapeDtypeStruct((batch, num_classes), jnp.float32) if mode.conditioned else None
    interface = [interface_cost(_interface_model(cfg, mode, len(h.shape), num_classes), h, label, mode.synthetic)
                 for h in outs]
    return balanced_sizes(costs, interface, cfg.model.modules)


def build_network(cfg, input_shape: tuple[int, ...], num_classes: int) -> Network:
    """Modules from `cfg.model`; per interface an SG model (SG modes) or an auxiliary classifier (dgl)."""
    layers = build_layers(cfg.model, num_classes)
    modules = group_layers(layers, module_sizes(cfg, layers, input_shape, num_classes))
    mode = Mode(cfg.mode)
    if not (mode.synthetic or mode.greedy):
        return Network(modules, (), num_classes, mode)
    interface, input_models = [], []
    h = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    for f in modules[:-1]:
        variables = jax.eval_shape(lambda x, f=f: f.init(jax.random.key(0), x, False), h)
        h = jax.eval_shape(lambda v, x, f=f: f.apply(v, x, False), variables, h)
        interface.append(_interface_model(cfg, mode, len(h.shape), num_classes))
        if mode.synthetic_inputs:
            input_models.append(build_input_model(cfg.si, h.shape[1:]))
    return Network(modules, tuple(interface), num_classes, mode, input_models=tuple(input_models))


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
