"""sgrad as a library: your own Flax modules, cut at their boundaries into decoupled modules, trained in any mode.

    net = sgrad.decouple([block1, block2, head], "dni", input_shape=(28, 28, 1), num_classes=10)
    state = net.init(jax.random.key(0), x, y)
    step = jax.jit(net.train_step)            # pure: (state, x, y) -> (state, metrics)

The runner (`sgrad-train`) builds every network it trains through `decouple`, so what a user's modules get is
exactly what the paper's networks get: the rule of `sgrad/modes/`, the models on the interfaces, the step.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sgrad.core import dni
from sgrad.models.loss import LossFn, cross_entropy
from sgrad.core.optim import Optimizers
from sgrad.core.step import TrainState, UpdateRule, init_state, make_train_step, probe
from sgrad.models.auxiliary import AuxClassifier
from sgrad.models.network import Network, activation_shapes, init_variables
from sgrad.models.synthetic import DenseSynthetic, ConvSynthetic
from sgrad.models.synthetic_input import ConvInput, DenseInput
from sgrad.modes import ModeRule, rule_for

ModelFor = Callable[[tuple[int, ...]], nn.Module]  # activation shape (no batch axis) -> model


def paper_sg_model(shape: tuple[int, ...], conditioned: bool = False) -> nn.Module:
    """The paper's SG model (sec. 4.1), zero-initialised output layer: for DNI 2 x 1024 Linear -> BN -> ReLU on flat
    activations (and per position on sequences [T, D]), two 128-channel 5x5 convs on feature maps; for cDNI (the
    label as input) a linear map."""
    hidden = 0 if conditioned else 2
    return ConvSynthetic(hidden, 128, 5) if len(shape) == 3 else DenseSynthetic(hidden, 1024)


def linear_aux_head(outputs: int | tuple[int, ...]) -> ModelFor:
    """DGL's default head: (2x2 average pooling for feature maps, then) a linear map to the network's output (the
    class logits, or an output of shape `outputs`); on sequences, LayerNorm and a linear map per position."""
    return lambda shape: AuxClassifier(outputs, 0, 256, 2)


def paper_input_model(shape: tuple[int, ...]) -> nn.Module:
    """Complete unlocking's I_i(x): 2 x 1024 hidden layers to a flat activation, 64-channel convs to maps."""
    return DenseInput(shape[0], 2, 1024) if len(shape) == 1 else ConvInput(tuple(shape), 2, 64)


@dataclasses.dataclass(frozen=True, eq=False)
class Decoupled:
    """A network cut into decoupled modules, with its mode, optimizers and update settings: init, a pure train
    step, and inference. Every method is a pure function of its arguments (jit them as you like)."""

    network: Network
    tx: Optimizers
    settings: UpdateRule = UpdateRule()
    check_finite: bool = False

    @property
    def rule(self) -> ModeRule:
        return self.network.rule

    def init(self, key: jax.Array, x: jnp.ndarray, y: jnp.ndarray) -> TrainState:
        """Parameters, batch statistics, optimizer states and the mode's carry, shaped after the batch (x, y)."""
        params, stats = init_variables(self.network, key, x, y)
        return init_state(self.network, params, stats, self.tx, x, y)

    def train_step(self, state: TrainState, x: jnp.ndarray, y: jnp.ndarray,
                   diagnostics: bool = True) -> tuple[TrainState, dict]:
        """One decoupled update of every module and interface model: (new state, metrics); `diagnostics` adds the
        global norms of gradients, updates and parameters (watch/norm/*).

        With `check_finite` (decouple's option) metrics also give `finite`: False when the loss or any new
        parameter is NaN or infinite, and the step then returns the state it was given, the last good one (as
        the runner's divergence guard keeps its last good checkpoint)."""
        new, metrics = make_train_step(self.network, self.tx, self.settings)(state, x, y, diagnostics)
        if not self.check_finite:
            return new, metrics
        finite = jnp.isfinite(metrics["loss"]) & jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(new.params)]))
        kept = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
        return kept, {**metrics, "finite": finite}

    def predict(self, state: TrainState, x: jnp.ndarray) -> jnp.ndarray:
        """Inference-mode outputs (batch norm on running statistics, no dropout)."""
        return dni.predict(self.network, state.params, state.stats, x)

    def probe(self, state: TrainState, x: jnp.ndarray, y: jnp.ndarray) -> dict:
        """The mode's diagnostics against the true gradient (e.g. sg/cosine/<i>); empty if it has none."""
        return probe(self.network, state, x, y, self.settings)


def decouple(modules: Sequence[nn.Module], mode: str | ModeRule = "dni", *, input_shape: Sequence[int],
             num_classes: int | None = None, loss: LossFn = cross_entropy,
             optimizer: optax.GradientTransformation | None = None,
             interface_optimizer: optax.GradientTransformation | None = None, sg_model: ModelFor | None = None,
             aux_model: ModelFor | None = None, input_model: ModelFor = paper_input_model,
             settings: UpdateRule = UpdateRule(), check_finite: bool = False) -> Decoupled:
    """Decouple `modules` (f_1..f_K: Flax modules; f_K's output is the network's) in `mode`.

    A module takes its training flag by name: `train` (True when training), `deterministic` (its negation, as
    nn.Dropout's convention), or neither; dropout draws from a key of the run's seed and the step
    (`settings.seed`). `loss(outputs, y)` gives one loss per example (default: softmax cross-entropy on integer
    labels); `num_classes`, what integer labels are one-hot over for cDNI, defaults to the last module's output
    width. The model on interface i is `sg_model(shape of h_i)` in the SG modes (default: the paper's,
    `paper_sg_model`) and `aux_model(...)` in dgl (default: a linear head to the network's output shape, trained
    on `loss`); the complete-unlocking modes add `input_model(shape of h_{i-1})` for module i > 1.
    Modules follow `optimizer` (default Adam 1e-4), interface and input models `interface_optimizer` (default:
    the same). `settings` holds sg.scale, BP(λ), SG warm-up, sporadic updates and the seed
    (sgrad.core.step.UpdateRule). `check_finite`: the step reports `finite` and keeps the last good state.
    """
    rule = mode if isinstance(mode, ModeRule) else rule_for(mode)
    modules = tuple(modules)
    if len(modules) < 2:
        raise ValueError(f"decouple needs at least two modules (one interface), got {len(modules)}")
    shapes = activation_shapes(modules, input_shape)
    out_shape = shapes[-1]
    if num_classes is None:
        num_classes = out_shape[-1]
    elif loss is cross_entropy and out_shape[-1] != num_classes:
        raise ValueError(f"num_classes={num_classes} but the last module ({type(modules[-1]).__name__}) outputs "
                         f"{out_shape[-1]} logits per example (shape {out_shape})")
    sg_model = sg_model or (lambda shape: paper_sg_model(shape, rule.conditioned))
    aux_model = aux_model or linear_aux_head(out_shape)
    interface_for = {"sg": sg_model, "aux": aux_model, None: None}[rule.interface]
    interface = tuple(interface_for(s) for s in shapes[:-1]) if interface_for else ()
    inputs = tuple(input_model(s) for s in shapes[:-1]) if rule.synthetic_inputs else ()
    optimizer = optimizer or optax.adam(1e-4)
    tx = Optimizers(optimizer, interface_optimizer or optimizer)
    return Decoupled(Network(modules, interface, num_classes, rule, inputs, loss), tx, settings, check_finite)
