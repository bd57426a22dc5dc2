"""A decoupled network's static structure, and the one way a Flax model of it is applied or initialised.

Plain values only: the modules f_1..f_K, the model on each interface (SG model or auxiliary classifier)
and the mode's rule (`sgrad.modes`), which this layer stores but never asks about itself.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgrad.models.loss import LossFn, condition, cross_entropy

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Network:
    """Modules f_1..f_K, the model at each interface 1..K-1 (M_i, an auxiliary classifier, or none), and the
    synthetic input models I_2..I_K of complete unlocking. Interface models take (h, label, train); `loss`
    maps (f_K's outputs, y) to per-example losses; `num_classes` is what integer labels are one-hot over."""

    modules: tuple[nn.Module, ...]
    interface_models: tuple[nn.Module, ...]
    num_classes: int | None
    rule: Any  # sgrad.modes.ModeRule, decided once when the network is built
    input_models: tuple[nn.Module, ...] = ()
    loss: LossFn = cross_entropy

    def interface_label(self, y: jnp.ndarray):
        """What the interface models see of the targets y: one-hot labels, or the target itself, where the mode
        conditions on them (cDNI); else None."""
        return self.rule.label(lambda: condition(y, self.num_classes))


@functools.cache
def _flag_name(kind: type) -> str | None:
    params = inspect.signature(kind.__call__).parameters
    return next((name for name in ("train", "deterministic") if name in params), None)


def mode_flag(model: nn.Module, train: bool) -> dict:
    """The keyword a module takes for training mode, by name: train=train, deterministic=not train, or none."""
    name = _flag_name(type(model))
    return {} if name is None else {name: train if name == "train" else not train}


def apply(model: nn.Module, params: PyTree, stats: PyTree, inputs: Sequence[Any], train: bool,
          rng: jax.Array | None = None) -> tuple[jnp.ndarray, PyTree]:
    """model(*inputs, <its training flag>) and its updated batch-norm statistics (unchanged when not training);
    `rng` feeds the module's dropout when training."""
    variables = {"params": params, "batch_stats": stats} if stats else {"params": params}
    if not train:
        return model.apply(variables, *inputs, **mode_flag(model, False)), stats
    rngs = {"dropout": rng} if rng is not None else None
    out, mutated = model.apply(variables, *inputs, **mode_flag(model, True), mutable=["batch_stats"], rngs=rngs)
    return out, mutated.get("batch_stats", stats)


def _split(variables) -> tuple[PyTree, PyTree]:
    return variables["params"], variables.get("batch_stats", {})


# Dropout draws from its own stream of the run's seed, apart from the sporadic-update draws (key(seed), step).
DROPOUT_STREAM = 0x44524F50


def dropout_rng(seed: int, step) -> jax.Array:
    """The dropout key of training step `step`: a function of the seed and the step only, so recomputing an old
    step's forward pass (DDG's stash, FR's replay) draws the masks it drew then."""
    # As uint32, however the step comes (a traced int32, a Python int; a filling pipeline's is negative).
    step = jnp.asarray(step, jnp.int32).astype(jnp.uint32)
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), DROPOUT_STREAM), step)


def _init(model: nn.Module, key: jax.Array, *inputs) -> PyTree:
    return model.init(key, *inputs, **mode_flag(model, False))


def init_params(model: nn.Module | None, key: jax.Array, *inputs) -> PyTree:
    """A model's parameters for `inputs`, or () where a mode puts no model (an LSTM's boundary under backprop):
    an empty tree that every optimizer and update passes through unchanged."""
    return () if model is None else _init(model, key, *inputs)["params"]


def init_variables(net: Network, key: jax.Array, x: jnp.ndarray, y: jnp.ndarray | None = None
                   ) -> tuple[dict, dict]:
    """Params and batch stats as {"modules": (per module), "interface": (per interface), "si": (input models)}.

    The "interface" slot holds whatever sits on the interfaces: SG models, or DGL's auxiliary classifiers.
    `y` (a batch of targets) shapes what a conditioned SG model sees; without it, integer labels.
    """
    if y is None:
        y = jnp.zeros((x.shape[0],), jnp.int32)
    try:
        hash(net)
    except TypeError:  # a user's module with an unhashable field: op by op, as Flax would
        return _init_network(net, key, x, y)
    return _init_network_compiled(net, key, x, y)


def _init_network(net: Network, key: jax.Array, x: jnp.ndarray, y: jnp.ndarray) -> tuple[dict, dict]:
    keys = jax.random.split(key, 2 * len(net.modules))
    params, stats, acts = [], [], []
    h = x
    for f, k in zip(net.modules, keys):
        p, s = _split(_init(f, k, h))
        params.append(p)
        stats.append(s)
        h, _ = apply(f, p, s, (h,), False)
        acts.append(h)
    label = net.interface_label(y)
    interface = [_split(_init(m, k, h, label))
                 for m, h, k in zip(net.interface_models, acts, keys[len(net.modules):])]
    inputs = [_split(_init(m, k, x))
              for m, k in zip(net.input_models, jax.random.split(keys[-1], max(len(net.input_models), 1)))]
    return ({"modules": tuple(params), "interface": tuple(p for p, _ in interface), "si": tuple(p for p, _ in inputs)},
            {"modules": tuple(stats), "interface": tuple(s for _, s in interface), "si": tuple(s for _, s in inputs)})


# One compiled program per network and shapes: run op by op, a fresh process compiles each of the initialisers'
# small operations on its own (a second or more of a short run's start-up on CPU, against a few tenths).
_init_network_compiled = jax.jit(_init_network, static_argnums=0)


def activation_shapes(modules: Sequence[nn.Module], input_shape: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Each module's output shape (without the batch axis) for inputs of `input_shape`, without computing."""
    h = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    shapes = []
    for i, f in enumerate(modules):
        try:
            variables = jax.eval_shape(lambda x, f=f: _init(f, jax.random.key(0), x), h)
            h = jax.eval_shape(lambda v, x, f=f: f.apply(v, x, **mode_flag(f, False)), variables, h)
        except Exception as e:
            came = (f"module {i} ({type(modules[i - 1]).__name__})'s output of shape {tuple(h.shape[1:])}" if i
                    else f"the input of shape {tuple(input_shape)}")
            raise ValueError(f"module {i + 1} ({type(f).__name__}) failed on {came}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
        shapes.append(tuple(h.shape[1:]))
    return tuple(shapes)
