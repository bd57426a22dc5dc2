"""The pipeline's static layout: which stage has which shapes, and each stage's state in slots it updates in place.

Stages of different shapes (input layer, hidden layers, classifier, conv or dense) share one SPMD program, so
every device holds buffers of the same shapes. A stage's state (parameters, interface model, batch
statistics, optimizer states, carry) is its list of leaves, largest first; leaf p lives in slot p, a [K, S_p]
buffer whose S_p is the largest p-th leaf of any stage (row i holds stage i's, zero-padded). Each leaf is
thus its own buffer, read and written in place: one flat padded row per device made XLA copy the whole row
two or three times a tick (a write into the row while other leaves of the old row were still to be read),
and ordering by size keeps the padding small (the slots' total is close to the largest stage's state). A
message between devices is [B, A+2]: the activation (or SG target) zero-padded to the widest, then a valid
column and an example-index column (targets are read by index).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import multihost_utils

from sgrad.core.optim import Optimizers
from sgrad.core.step import TrainState, UpdateRule
from sgrad.models.network import Network, activation_shapes
from sgrad.modes import names


@struct.dataclass
class PipelineState:
    """Everything in flight. Leading axis K (one row per device) except `step`."""

    step: jnp.ndarray           # ticks run = minibatches fed
    stage_KxS: tuple            # slot p: [K, S_p], row i leaf p (by size) of stage i's params, SG model, batch
                                # stats, optimizer states, carry; padded
    fwd_KxBxA2: jnp.ndarray     # activation + valid (-1: none) + example index, arriving at device i next tick
    bwd_KxBxA2: jnp.ndarray     # SG target + valid column (+ unused), arriving at device i next tick
    past_Kx2xBxA2: jnp.ndarray  # each device's last two outgoing activations, newest first
    # sg_share > 0 only (else None): the last rows of device i's last input message and of the SG target it sent
    # back for it, on which it regresses its copy of M_{i-1} next tick
    stash_Kx2xRxA2: Any = None
    # first_share > 0 only (else None): the rows of module 0's output that device 1 made on its copy last tick
    first_KxRxA2: Any = None


@dataclasses.dataclass(frozen=True, eq=False)
class Pipeline:
    """The static layout: which stage has which shapes and how its state is flattened."""

    net: Network
    tx: Optimizers
    settings: UpdateRule                      # sg.scale and the run's seed (dropout: models.network.dropout_rng)
    batch: int                                # examples per device per tick (the batch / replicas)
    out_shapes: tuple[tuple[int, ...], ...]   # module i's activation, without the batch axis
    slots: tuple[int, ...]                    # S_p: each slot's length
    leaves: tuple[tuple[Any, ...], ...]       # stage i: its treedef, then (slot, shape, dtype) per leaf
    width: int                                # A: the widest activation sent between devices
    replicas: int = 1                         # copies of the pipeline, each on 1/replicas of the batch
    shared_rows: int = 0                      # sg_share: rows of M_i's regression batch done on device i+1
    grad_width: int = 0                       # P: the largest shared gradient's flat length (sg_share, first_share)
    first_rows: int = 0                       # first_share: rows of each minibatch device 1 runs module 0 on
    dtype: Any = jnp.float32                  # the slots' (every leaf's, promoted as ravel_pytree does)
    per_device: int = 1                       # M: consecutive modules on each device (modules_per_device)

    @property
    def k(self) -> int:
        return len(self.net.modules)

    @property
    def devices(self) -> int:
        """Devices along the pipeline: K / M (times `replicas` in all)."""
        return self.k // self.per_device

    @property
    def rule(self) -> Any:
        return self.net.rule

    @property
    def stage(self) -> Any:
        """The mode's pipeline protocol (sgrad.modes.rule.Stage)."""
        return self.net.rule.stage

    def tree(self, i: int, row: tuple) -> dict:
        """Stage i's state from its row of the slots."""
        treedef, *leaves = self.leaves[i]
        return jax.tree.unflatten(treedef, [row[p][:int(np.prod(shape))].reshape(shape).astype(dtype)
                                            for p, shape, dtype in leaves])

    def zeros_row(self) -> tuple:
        """One device's row of the slots, all zeros."""
        return tuple(jnp.zeros(size, self.dtype) for size in self.slots)


def stage_tree(state: TrainState, i: int, last: bool, shared: bool = False, first: bool = False) -> dict:
    """Stage i's share of the state: module i, its interface model (none for the last), input model I_i (none for
    the first), and what the mode carries for module i; `shared` (sg_share): device i > 0 also holds a copy of
    M_{i-1} ("peer"): its parameters and optimizer state, updated as M_{i-1}'s are, and its batch statistics as
    they were at the start (never updated: the copy only runs in training mode, which normalises by its rows);
    `first` (first_share): device 1 also holds a copy of module 0 and its interface model ("first"), kept so."""
    def pick(tree, group):
        if group == "interface":
            return () if last or not tree["interface"] else tree["interface"][i]
        if group == "si":
            return tree["si"][i - 1] if i > 0 and tree["si"] else ()
        return tree["modules"][i]
    stage = {f"{name}{suffix}": pick(tree, group)
             for name, group in (("module", "modules"), ("interface", "interface"), ("si", "si"))
             for suffix, tree in (("", state.params), ("_stats", state.stats), ("_opt", state.opt_state))}
    stage["carry"] = state.carry[i] if state.carry and not last else ()
    if shared and i > 0:
        for suffix, tree in (("", state.params), ("_stats", state.stats), ("_opt", state.opt_state)):
            stage[f"peer{suffix}"] = tree["interface"][i - 1]
    if first and i == 1:
        for suffix, tree in (("", state.params), ("_stats", state.stats), ("_opt", state.opt_state)):
            stage[f"first{suffix}"] = {"interface": tree["interface"][0], "module": tree["modules"][0]}
    return stage


def gather(trees: Sequence[dict], step) -> TrainState:
    """The inverse of stage_tree over all stages."""
    group = lambda key, stages: tuple(t[key] for t in stages)
    parts = []
    for suffix in ("", "_stats", "_opt"):
        parts.append({"modules": group("module" + suffix, trees),
                      "interface": group("interface" + suffix, trees[:-1]) if trees[0]["interface"] != () else (),
                      "si": group("si" + suffix, trees[1:]) if trees[1]["si"] != () else ()})
    carry = group("carry", trees[:-1]) if trees[0]["carry"] != () else ()
    return TrainState(step, *parts, carry)


def build_pipeline(net: Network, tx: Optimizers, state: TrainState, input_shape: Sequence[int],
                   batch: int, settings: UpdateRule = UpdateRule(), replicas: int = 1, sg_share: float = 0.0,
                   per_device: int = 1, first_share: float = 0.0) -> tuple[Pipeline, PipelineState]:
    """The layout of a decoupled network over len(net.modules) x `replicas` devices and its initial state.

    With replicas > 1 every module has that many devices, each running it on its share of the batch; the
    messages are split along the batch, the stage state is the same on all of them (their gradients and batch
    statistics are averaged). `sg_share` > 0: device i+1 regresses its copy of M_i on that share of each
    batch, device i on the rest (sgrad/devices/pipeline.py). `per_device` M > 1: device d holds modules
    d·M .. d·M+M-1 (the slots' rows, sharded in blocks of M), so K modules need K / M devices. `first_share` > 0:
    device 1 trains a copy of module 0 (and its interface model) on that share of each minibatch's rows, device
    0 on the rest (sgrad/devices/pipeline.py).
    """
    if net.rule.stage is None:
        pipelined = names(lambda r: r.stage is not None)
        raise ValueError(f"parallel=pipeline needs a decoupled mode ({pipelined}): {net.rule.name} is "
                         "update-locked")
    if batch % replicas:
        raise ValueError(f"replicas={replicas}: trainer.batch_size={batch} must be divisible by it")
    k = len(net.modules)
    check_per_device(net, per_device, replicas, sg_share)
    rows = shared_rows(net, batch, replicas, sg_share)
    first = first_rows(net, batch, replicas, sg_share, per_device, first_share)
    trees = [stage_tree(state, i, i == k - 1, rows > 0, first > 0) for i in range(k)]
    flat_trees = [jax.tree.flatten(t) for t in trees]
    dtype = jnp.result_type(*(leaf for leaves, _ in flat_trees for leaf in leaves))
    ranks = [_slot_of([leaf.size for leaf in leaves]) for leaves, _ in flat_trees]
    slots = [0] * max(len(r) for r in ranks)
    for (leaves, _), rank in zip(flat_trees, ranks):
        for leaf, p in zip(leaves, rank):
            slots[p] = max(slots[p], leaf.size)
    layout = tuple((treedef, *((p, leaf.shape, leaf.dtype) for leaf, p in zip(leaves, rank)))
                   for (leaves, treedef), rank in zip(flat_trees, ranks))
    out_shapes = activation_shapes(net.modules, input_shape)
    width = max(int(np.prod(s)) for s in out_shapes[:-1])
    pipe = Pipeline(net, tx, settings, batch // replicas, out_shapes, tuple(slots), layout, width, replicas, rows,
                    shared_width(state.params, rows > 0, first > 0), first, dtype, per_device)
    stage = tuple(jnp.stack(slot) for slot in zip(*(repack(pipe.zeros_row(), t) for t in trees)))
    msg = jnp.zeros((k, batch, width + 2), jnp.float32)
    nothing = msg.at[..., -2].set(-1.0)
    pstate = PipelineState(state.step, stage, nothing, msg, jnp.stack([nothing, nothing], axis=1))
    if rows:
        pstate = pstate.replace(stash_Kx2xRxA2=jnp.zeros((k, 2, rows, width + 2), jnp.float32))
    if first:
        pstate = pstate.replace(first_KxRxA2=nothing[:, :first])
    return pipe, pstate


def _slot_of(sizes: Sequence[int]) -> list[int]:
    """Each leaf's slot: its rank by size, largest first (ties in tree order), so that every stage's largest
    leaves share the largest slots."""
    order = sorted(range(len(sizes)), key=lambda j: -sizes[j])
    slot = [0] * len(sizes)
    for p, j in enumerate(order):
        slot[j] = p
    return slot


def check_per_device(net: Network, per_device: int, replicas: int, sg_share: float) -> None:
    """modules_per_device: a whole number of devices, and (for now) only the unlocked schedule without replicas
    or sg_share, whose messages and gradient exchanges assume one module per device."""
    if per_device == 1:
        return
    k = len(net.modules)
    if per_device < 1 or k % per_device:
        raise ValueError(f"modules_per_device={per_device}: must divide the network's {k} modules (model.modules "
                         "or model.dni_every set how many there are)")
    if net.rule.stage.schedule == "locked":
        raise ValueError(f"modules_per_device={per_device}: mode={net.rule.name}'s locked forward pass runs one "
                         "module per device (modules_per_device=1)")
    if replicas > 1 or sg_share:
        raise ValueError(f"modules_per_device={per_device}: needs replicas=1 and sg_share=0 (got replicas={replicas}, "
                         f"sg_share={sg_share})")


def shared_rows(net: Network, batch: int, replicas: int, sg_share: float) -> int:
    """How many rows of each SG model's regression batch the device above computes (sg_share)."""
    if not sg_share:
        return 0
    if not net.rule.shares_sg:
        shared = names(lambda r: r.shares_sg)
        raise ValueError(f"sg_share={sg_share}: only modes whose interface model regresses on a target the device "
                         f"above makes can share it ({shared}), not mode={net.rule.name}")
    if replicas > 1:
        raise ValueError(f"sg_share={sg_share}: needs replicas=1")
    return _rows_of("sg_share", sg_share, batch)


def first_rows(net: Network, batch: int, replicas: int, sg_share: float, per_device: int, first_share: float) -> int:
    """How many rows of each minibatch device 1 runs its copy of module 0 on (first_share)."""
    if not first_share:
        return 0
    if not net.rule.shares_first:
        shared = names(lambda r: r.shares_first)
        raise ValueError(f"first_share={first_share}: only modes whose module 0 learns from its own interface "
                         f"model can train it on two devices ({shared}), not mode={net.rule.name}")
    if replicas > 1 or sg_share or per_device > 1:
        raise ValueError(f"first_share={first_share}: needs replicas=1, sg_share=0 and modules_per_device=1 (got "
                         f"replicas={replicas}, sg_share={sg_share}, modules_per_device={per_device})")
    return _rows_of("first_share", first_share, batch)


def shared_width(params: dict, sg_share: bool, first_share: bool) -> int:
    """P: the flat length of the gradient half a shared tick sends each way (before its valid flag): the largest
    SG model's parameters (sg_share), module 0's and its interface model's (first_share), else 0."""
    count = lambda tree: sum(leaf.size for leaf in jax.tree.leaves(tree))
    if first_share:
        return count((params["modules"][0], params["interface"][0]))
    return max(map(count, params["interface"])) if sg_share else 0


def _rows_of(key: str, share: float, batch: int) -> int:
    """The rows of a batch that `share` gives the device above; each device keeps at least one."""
    rows = round(share * batch)
    if not 0 < rows < batch:
        raise ValueError(f"{key}={share}: must leave each device at least one row of the batch of {batch} "
                         "(between 0 and 1)")
    return rows


def repack(row: tuple, tree: dict, keys: Sequence[str] | None = None) -> tuple:
    """A stage's new state written into its row of the slots, each leaf in place over the front of its slot.
    `keys`: write only these entries of the stage tree (the others are unchanged)."""
    named = [(key, leaf) for key in sorted(tree) for leaf in jax.tree.leaves(tree[key])]  # jax.tree's order
    row = list(row)
    for (key, leaf), p in zip(named, _slot_of([leaf.size for _, leaf in named])):
        if keys is None or key in keys:
            value = jnp.ravel(leaf).astype(row[p].dtype)
            row[p] = value if value.size == row[p].size else jax.lax.dynamic_update_slice(row[p], value, (0,))
    return tuple(row)


def row_of(stage_KxS: tuple, i: int) -> tuple:
    """Device i's row of the slots."""
    return tuple(slot[i] for slot in stage_KxS)


def pad(a: jnp.ndarray, width: int) -> jnp.ndarray:
    flat = a.reshape(a.shape[0], -1)
    return jnp.pad(flat, ((0, 0), (0, width - flat.shape[1])))


def unpad(a_BxA: jnp.ndarray, shape: tuple[int, ...]) -> jnp.ndarray:
    return a_BxA[:, :int(np.prod(shape))].reshape(a_BxA.shape[0], *shape)


def to_train_state(pipe: Pipeline, state: PipelineState) -> TrainState:
    """The pipeline's parameters as an ordinary TrainState on the default device (for eval, probes, export).

    With several processes (jax.distributed) every process must call it: the stages live on other hosts.
    """
    slots = multihost_utils.process_allgather(state.stage_KxS, tiled=True)
    trees = [pipe.tree(i, tuple(jnp.asarray(slot[i]) for slot in slots)) for i in range(pipe.k)]
    return gather(trees, jnp.asarray(multihost_utils.process_allgather(state.step, tiled=True)))
