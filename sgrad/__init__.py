"""sgrad: decoupled neural interfaces (synthetic gradients) and the other ways to decouple modules, in JAX.

Library use: `sgrad.decouple(modules, mode, ...)` (sgrad/decoupled.py); the modes are `sgrad.RULES`. Imported
lazily, so that `sgrad.config` and the command line start without loading JAX.
"""

__all__ = ["decouple", "Decoupled", "RULES", "UpdateRule", "cross_entropy", "mse"]


def __getattr__(name: str):
    if name in ("decouple", "Decoupled"):
        import importlib
        module = importlib.import_module("sgrad.decoupled")
        return getattr(module, name)
    if name == "RULES":
        from sgrad.modes import RULES
        return RULES
    if name == "UpdateRule":
        from sgrad.core.step import UpdateRule
        return UpdateRule
    if name in ("cross_entropy", "mse"):
        from sgrad.models import loss
        return getattr(loss, name)
    raise AttributeError(f"module 'sgrad' has no attribute {name!r}")
