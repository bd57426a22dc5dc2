"""The one place that reads a config to build what a run trains: the network (feed-forward, your own modules,
LSTM, two clocks), the optimizers and schedules, the update settings, and the mode's start-up checks.
Everything below this layer takes plain values."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sgrad.config import ConfigError, validate
from sgrad.config.schema import require
from sgrad.models.loss import LOSSES, LossFn
from sgrad.core.optim import Optimizers
from sgrad.core.recurrent import RecurrentNet
from sgrad.core.step import UpdateRule
from sgrad.core.two_timescale import TwoClockNet
from sgrad.decoupled import Decoupled, decouple
from sgrad.models import build_layers, group_layers
from sgrad.models.auxiliary import build_aux_classifier
from sgrad.models.lstm import LSTMCore
from sgrad.models.partition import balanced_sizes, even_sizes, flops, interface_cost, layer_costs, seconds
from sgrad.core.least_squares import forgetting_least_squares
from sgrad.models.synthetic import DenseSynthetic, build_sg_model
from sgrad.models.synthetic_input import build_input_model
from sgrad.modes import RULES, ModeRule, names, rule_for
from sgrad.run.partition_cache import profiled_sizes


def mode_rule(cfg) -> ModeRule:
    return rule_for(cfg.mode)


def learning_rate(optim_cfg, total_steps: int) -> optax.Schedule:
    """The schedule of `optim.schedule`, with an optional linear warm-up."""
    kind = str(optim_cfg.schedule)
    if kind == "constant":
        sched = optax.constant_schedule(optim_cfg.lr)
    elif kind == "piecewise":
        sched = optax.piecewise_constant_schedule(
            optim_cfg.lr, {int(b): optim_cfg.decay_factor for b in optim_cfg.boundaries})
    elif kind == "cosine":
        sched = optax.cosine_decay_schedule(optim_cfg.lr, max(total_steps - optim_cfg.warmup_steps, 1))
    else:
        raise ValueError(f"optim.schedule={kind!r}: allowed values are constant, piecewise, cosine")
    if optim_cfg.warmup_steps > 0:
        warm = optax.linear_schedule(0.0, optim_cfg.lr, optim_cfg.warmup_steps)
        sched = optax.join_schedules([warm, sched], [optim_cfg.warmup_steps])
    return sched


def build_optimizer(optim_cfg, total_steps: int) -> optax.GradientTransformation:
    """One optimizer from an OptimConfig."""
    lr = learning_rate(optim_cfg, total_steps)
    kind = str(optim_cfg.name)
    if kind == "adam":
        if optim_cfg.weight_decay > 0:
            tx = optax.adamw(lr, optim_cfg.b1, optim_cfg.b2, optim_cfg.eps, weight_decay=optim_cfg.weight_decay)
        else:
            tx = optax.adam(lr, optim_cfg.b1, optim_cfg.b2, optim_cfg.eps)
    elif kind == "sgd":
        tx = optax.sgd(lr, momentum=optim_cfg.momentum or None, nesterov=optim_cfg.nesterov)
        if optim_cfg.weight_decay > 0:
            tx = optax.chain(optax.add_decayed_weights(optim_cfg.weight_decay), tx)
    elif kind == "rls":
        return forgetting_least_squares(optim_cfg.forget, optim_cfg.ridge)
    else:
        raise ValueError(f"optim.name={kind!r}: allowed values are adam, sgd, rls")
    if optim_cfg.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(optim_cfg.clip_norm), tx)
    return tx


def build_train_optimizer(cfg, total_steps: int) -> Optimizers:
    """Modules follow `cfg.optim`, interface (SG, auxiliary, input) models `cfg.sg.optim`."""
    return Optimizers(build_optimizer(cfg.optim, total_steps), build_optimizer(cfg.sg.optim, total_steps))


def update_settings(cfg) -> UpdateRule:
    return UpdateRule(cfg.sg.scale, cfg.sg.lambda_, cfg.sg.lambda_final, cfg.sg.lambda_steps, cfg.sg.warmup_steps,
                      cfg.trainer.update_prob, cfg.seed)


def custom_modules(model_cfg, num_classes: int) -> list[nn.Module]:
    """`model=custom`: the user's function `model._target_` (with `model.args` and num_classes) instantiated by
    Hydra; it must return two or more Flax modules, one per decoupled module."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    target = model_cfg._target_
    try:
        made = instantiate({"_target_": target, **dict(model_cfg.args)}, num_classes=num_classes)
    except InstantiationException as e:
        # Hydra's first line only names the target; the user's own error (a misspelled keyword) is the cause.
        cause = e.__cause__
        why = (f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0]}" if cause else
               str(e).strip().splitlines()[0])
        raise ConfigError(f"model._target_={target} could not be called ({why}); expected {CUSTOM_EXPECTED}") from None
    modules = list(made) if isinstance(made, (list, tuple)) else None
    if not modules or len(modules) < 2 or not all(isinstance(m, nn.Module) for m in modules):
        raise ConfigError(f"model._target_={target} returned {type(made).__name__}"
                          f"{'' if modules is None else f' of {len(modules)}'}; expected {CUSTOM_EXPECTED}")
    return modules


def module_sizes(cfg, layers, input_shape: tuple[int, ...], num_classes: int) -> tuple[int, ...]:
    """Layers per module: every `model.dni_every`, or `model.modules` balanced by estimated (`balanced`) or
    measured (`profiled`) cost (sgrad/models/partition.py)."""
    if str(cfg.model.partition) == "even":
        return even_sizes(len(layers), cfg.model.dni_every)
    rule = mode_rule(cfg)
    batch = cfg.trainer.batch_size
    # What cDNI's SG models see: a label per example, or per position of a Transformer's window.
    per_example = (batch, cfg.model.context) if str(cfg.model.name) == "transformer" else (batch,)
    label = rule.label(lambda: jax.ShapeDtypeStruct((*per_example, num_classes), jnp.float32))
    make = interface_models(cfg, num_classes).get(rule.interface)

    def choose(cost):
        costs, outs = layer_costs(layers, jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32), cost)
        costed = {}  # interfaces alike are costed once, as layers are
        for h in outs:
            if h.shape not in costed:
                costed[h.shape] = interface_cost(make(h.shape[1:]) if make else None, h, label, rule.synthetic, cost)
        # sg_share: the device above does that share of each SG model's regression
        share = float(cfg.sg_share)
        interface = [costed[h.shape][0] + (1 - share) * costed[h.shape][1] for h in outs]
        return balanced_sizes(costs, interface, cfg.model.modules, [share * costed[h.shape][1] for h in outs],
                              float(cfg.first_share))
    if str(cfg.model.partition) == "balanced":
        return choose(flops)
    key = (tuple(map(repr, layers)), batch, tuple(input_shape), rule.name, str(cfg.sg), str(cfg.aux),
           cfg.model.modules, *((float(cfg.sg_share),) if cfg.sg_share else ()),
           *(("first", float(cfg.first_share)) if cfg.first_share else ()))
    return profiled_sizes(key, cfg.model.modules, lambda: choose(seconds))


def interface_models(cfg, num_classes: int) -> dict:
    """The config's model for each kind of interface (a rule's `interface`), as factories of an activation shape."""
    return {"sg": lambda shape: build_sg_model(cfg.sg, len(shape) + 1),
            "aux": lambda shape: build_aux_classifier(cfg.aux, num_classes)}


def build_decoupled(cfg, input_shape: tuple[int, ...], num_classes: int, total_steps: int) -> Decoupled:
    """The feed-forward network of `cfg.model` (or the user's `model._target_`), decoupled in `cfg.mode`."""
    rule = mode_rule(cfg)
    if str(cfg.model.name) == "custom":
        modules = custom_modules(cfg.model, num_classes)
    else:
        layers = build_layers(cfg.model, num_classes)
        modules = group_layers(layers, module_sizes(cfg, layers, input_shape, num_classes))
    tx = build_train_optimizer(cfg, total_steps)
    makers = interface_models(cfg, num_classes)
    return decouple(modules, rule, input_shape=input_shape, num_classes=num_classes, loss=loss_fn(cfg.loss),
                    optimizer=tx.modules,
                    interface_optimizer=tx.sg, sg_model=makers["sg"], aux_model=makers["aux"],
                    input_model=lambda s: build_input_model(cfg.si, s), settings=update_settings(cfg))


def build_network(cfg, input_shape: tuple[int, ...], num_classes: int):
    """The decoupled network alone (tests, scripts): `build_decoupled(...).network`."""
    return build_decoupled(cfg, input_shape, num_classes, cfg.trainer.steps).network


def build_recurrent_net(cfg, output_dim: int, loss: str) -> RecurrentNet:
    """`model=lstm`: the LSTM core, and in the SG modes the boundary's SG model M(s_T)."""
    rule = mode_rule(cfg)
    core = LSTMCore(cfg.model.hidden, output_dim, aux=rule.synthetic and cfg.sg.aux)
    # The state's SG model has no batch norm: one boundary per step gives a small, correlated batch.
    sg = DenseSynthetic(cfg.sg.hidden_layers, cfg.sg.width, batch_norm=False) if rule.synthetic else None
    # λ = 0 is the one-window target: no window after the boundary is read (unless the oracle reads them).
    # Accumulate BP(λ) reads no window ahead either: its traces look back.
    forward = cfg.sg.trace_lambda > 0 and str(cfg.sg.trace) == "forward"
    windows = cfg.sg.trace_windows if (forward or cfg.sg.oracle) and rule.synthetic else 0
    return RecurrentNet(core, sg, loss, rule, cfg.sg.discount, cfg.sg.aux_weight, squash_cell=cfg.sg.squash_cell,
                        trace_lambda=float(cfg.sg.trace_lambda), trace_windows=windows, oracle=bool(cfg.sg.oracle),
                        trace=str(cfg.sg.trace) if rule.synthetic else "forward")


def build_two_clock_net(cfg) -> TwoClockNet:
    """`+exp=two_timescale_dni`: LSTM A every step, LSTM B every `trainer.bptt` steps, M at A's output."""
    bits, period, hidden = cfg.dataset.bits, cfg.trainer.bptt, cfg.model.hidden
    return TwoClockNet(LSTMCore(hidden, bits), LSTMCore(hidden, period * bits + 1),
                       DenseSynthetic(cfg.sg.hidden_layers, cfg.sg.width, batch_norm=False),
                       mode_rule(cfg))


def task_family(cfg) -> str:
    if str(cfg.dataset.name) == "two_timescale":
        return "two_clocks"
    return "sequence" if str(cfg.model.name) == "lstm" else "classification"


def check(cfg: Any) -> None:
    """Everything that can be refused at start-up: the schema's range checks, then what the mode accepts (its
    experiment families, parallel layouts and settings), each as one line naming the key and what is allowed."""
    validate(cfg)
    name = str(cfg.mode)
    require(name in RULES, "mode", name, f"one of {', '.join(sorted(RULES))}")
    rule = RULES[name]
    family = task_family(cfg)
    where = f"dataset.name={cfg.dataset.name}" if family != "classification" else f"model.name={cfg.model.name}"
    require(family in rule.tasks, "mode", name,
           f"one of {names(lambda r: family in r.tasks)} for {where}")
    parallel = str(cfg.parallel)
    why = {"pipeline": " (it is update-locked; use parallel=data)",
           "data": " (its carry holds whole minibatches, which data parallelism would split)"}.get(parallel, "")
    require(parallel in rule.parallel, "parallel", parallel, f"one of {', '.join(rule.parallel)} for mode={name}{why}")
    if parallel == "pipeline":
        require(cfg.replicas == 1 or rule.stage.schedule != "locked", "replicas", cfg.replicas,
                f"1 for mode={name} (its stash holds whole minibatches, which replicas would split)")
        require(cfg.modules_per_device == 1 or rule.stage.schedule != "locked", "modules_per_device",
                cfg.modules_per_device, f"1 for mode={name} (its locked forward pass runs one module per device)")
        shared = names(lambda r: r.shares_sg)
        require(cfg.sg_share == 0.0 or rule.shares_sg, "sg_share", cfg.sg_share,
                f"0 for mode={name} (only the SG models of {shared} regress on a target the device above makes)")
        firsts = names(lambda r: r.shares_first)
        require(cfg.first_share == 0.0 or rule.shares_first, "first_share", cfg.first_share,
                f"0 for mode={name} (only {firsts} update module 0 from what its own device has)")
        # Each device updates from what it has at once; anything that waits for the true gradient would lock it.
        require(cfg.trainer.update_prob == 1.0, "trainer.update_prob", cfg.trainer.update_prob,
               "1.0 with parallel=pipeline")
        for key, off in (("lambda_", 0.0), ("lambda_final", None), ("warmup_steps", 0)):
            require(cfg.sg[key] == off, f"sg.{key}", cfg.sg[key], f"{off} with parallel=pipeline (it needs the true "
                   "gradient from the module above)")
    for key, value, allowed in rule.refusals(update_settings(cfg)):
        require(False, key, value, allowed)
    require(rule.synthetic or not cfg.sg.oracle, "sg.oracle", cfg.sg.oracle,
            f"false with mode={name} (the oracle stands in for a synthetic gradient)")
    require(rule.synthetic or str(cfg.sg.trace) != "accumulate", "sg.trace", str(cfg.sg.trace),
            f"forward with mode={name} (accumulate BP(λ) trains a synthetic gradient model)")
    require(str(cfg.sg.trace) != "accumulate" or cfg.sg.hidden_layers == 0, "sg.hidden_layers", cfg.sg.hidden_layers,
            "0 with sg.trace=accumulate (its traces are kept for a linear SG model)")
    if str(cfg.sg.optim.name) == "rls":
        require(str(cfg.model.name) == "lstm" and rule.synthetic and cfg.sg.hidden_layers == 0, "sg.optim.name",
                cfg.sg.optim.name, "adam or sgd; rls only with model.name=lstm, a synthetic-gradient mode and "
                "sg.hidden_layers=0 (it refits a linear SG model)")
    if str(cfg.model.name) == "transformer":
        # Synthetic inputs I_i(x) would map token ids to a block's activations: no such model here.
        require(not rule.synthetic_inputs, "mode", name,
                f"one of {names(lambda r: family in r.tasks and not r.synthetic_inputs)} for model=transformer")
    if str(cfg.model.name) == "custom":
        _locate_target(cfg.model._target_)
    if family != "classification":
        require(str(cfg.loss.name) == "cross_entropy", "loss", str(cfg.loss.name),
                f"cross_entropy for dataset.name={cfg.dataset.name} (its task sets the loss)")
    loss_fn(cfg.loss)


CUSTOM_EXPECTED = "a function (num_classes, **model.args) -> a list of two or more flax.linen Modules"
LOSS_EXPECTED = "a function (outputs, y) -> per-example losses [B]"


def loss_fn(loss_cfg) -> LossFn:
    """`loss=cross_entropy|mse`, or the user's function `loss._target_` with loss=custom."""
    name = str(loss_cfg.name)
    if name != "custom":
        require(loss_cfg._target_ is None, "loss._target_", loss_cfg._target_,
                f"null with loss={name} (set loss=custom to use your own function)")
        return LOSSES[name]
    require(loss_cfg._target_ is not None, "loss._target_", None,
            f"the import path of {LOSS_EXPECTED} with loss=custom")
    fn = _locate_target(loss_cfg._target_, "loss._target_", LOSS_EXPECTED)
    require(callable(fn), "loss._target_", loss_cfg._target_, LOSS_EXPECTED)
    return fn


def _locate_target(target: str, key: str = "model._target_", expected: str = CUSTOM_EXPECTED):
    """The user's function, imported (not called) so that a wrong path fails before any data is read."""
    import importlib
    module, _, name = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{key}={target} could not be imported ({type(e).__name__}: {e}); expected "
                          f"{expected}") from None
