"""The task's loss: a function (outputs, y) -> per-example losses [B], the user's or one of these.

Everything else about the task follows from the labels: integer labels are classes (accuracy is reported,
cDNI's SG models see one-hot(y)); any other target is used as given.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Softmax cross-entropy on integer labels; with extra axes (e.g. [B, T] tokens) the mean over them."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return ce if ce.ndim == 1 else ce.reshape(ce.shape[0], -1).mean(axis=1)


def mse(outputs: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Mean squared error over each example's entries; integer labels are regressed as one-hot vectors of the
    outputs' width (so `loss=mse` runs on a classification dataset too)."""
    if is_classes(targets):
        targets = jax.nn.one_hot(targets, outputs.shape[-1])
    err = (outputs - targets.reshape(outputs.shape)) ** 2
    return err.reshape(err.shape[0], -1).mean(axis=1)


LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mse}


def is_classes(y: jnp.ndarray) -> bool:
    """Integer labels: a classification task (static under jit: the dtype is)."""
    return jnp.issubdtype(jnp.asarray(y).dtype, jnp.integer)


def per_example(loss: LossFn, outputs: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """loss(outputs, y), checked to be one loss per example."""
    values = loss(outputs, y)
    if values.shape != outputs.shape[:1]:
        name = getattr(loss, "__name__", repr(loss))
        raise ValueError(f"loss {name} returned shape {values.shape} for a batch of {outputs.shape[0]}: a loss "
                         f"maps (outputs, y) to one loss per example, shape [B]")
    return values


def value_and_top_gradient(loss: LossFn, outputs: jnp.ndarray, y: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The batch-mean loss and its gradient at the outputs in summed-loss units (sgrad/core/dni.py)."""
    total, grad = jax.value_and_grad(lambda o: per_example(loss, o, y).sum())(outputs)
    return total / outputs.shape[0], grad


def accuracy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def task_metrics(loss_value: jnp.ndarray, outputs: jnp.ndarray, y: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """`loss`, and `accuracy` when the labels are classes."""
    out = {"loss": loss_value}
    if is_classes(y):
        out["accuracy"] = accuracy(outputs, y)
    return out


def condition(y: jnp.ndarray, num_classes: int | None) -> jnp.ndarray:
    """What cDNI's SG models see of the target: one-hot(y) for integer labels, the target itself otherwise,
    flattened to [B, C]."""
    if is_classes(y):
        return jax.nn.one_hot(y, num_classes)
    return y.reshape(y.shape[0], -1).astype(jnp.float32)
