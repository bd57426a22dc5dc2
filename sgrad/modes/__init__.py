"""Every gradient mode as one record (`ModeRule`, sgrad/modes/rule.py) in one file of this package, looked up once
by name: `RULES[cfg.mode]`. A new mode is a new file here that defines `RULE` (or `RULES`), a
configs/mode/<name>.yaml, and its tests; nothing else asks which mode it is."""

from __future__ import annotations

import importlib
import pkgutil

from sgrad.modes.rule import ModeRule


def _discover() -> dict[str, ModeRule]:
    rules: dict[str, ModeRule] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found = getattr(module, "RULES", ()) + ((module.RULE,) if hasattr(module, "RULE") else ())
        for rule in found:
            if rule.name in rules:
                raise RuntimeError(f"mode {rule.name!r} is defined twice (sgrad/modes/{info.name}.py)")
            rules[rule.name] = rule
    return rules


RULES: dict[str, ModeRule] = _discover()


def names(where) -> str:
    """The modes whose rule passes `where` (e.g. `lambda r: r.shares_sg`), sorted, for a message."""
    return ", ".join(n for n, r in sorted(RULES.items()) if where(r))


def rule_for(name: str) -> ModeRule:
    """The rule of mode `name`, or a one-line error naming the modes there are."""
    try:
        return RULES[str(name)]
    except KeyError:
        raise ValueError(f"mode={name} is not a known mode: one of {', '.join(sorted(RULES))}") from None
