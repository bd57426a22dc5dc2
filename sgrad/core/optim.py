"""The optimizers a decoupled network steps with: one for the modules, one for the models on the interfaces.

Built from a config in sgrad/run/build.py (the one place that reads it); here only the plain pair.
"""

from __future__ import annotations

from typing import NamedTuple

import optax


class Optimizers(NamedTuple):
    """Module and interface-model optimizers; each module and interface model keeps its own state, so each can
    skip a step on its own."""

    modules: optax.GradientTransformation
    sg: optax.GradientTransformation
