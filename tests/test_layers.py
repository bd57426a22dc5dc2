"""The package's layering is true: each layer imports only the layers below it (docs/architecture.md)."""

import ast
from pathlib import Path

import sgrad

PACKAGE = Path(sgrad.__file__).parent
# Bottom to top. data and models only need config; the library API (decouple) sits on the rules.
LAYERS = ["config", "data", "models", "core", "modes", "decoupled", "devices", "run", "cli"]
RANK = {"config": 0, "data": 1, "models": 1, "core": 2, "modes": 3, "decoupled": 4, "devices": 5, "run": 6, "cli": 7}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "sgrad" and parts[1] in RANK else None


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_no_layer_imports_a_layer_above_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        own = _layer(".".join(rel.parts))
        if own is None:
            continue
        for name in _imports(path):
            other = _layer(name)
            if other is not None and RANK[other] > RANK[own]:
                upward.append(f"{rel} ({own}) imports {name} ({other})")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_the_check_can_fail():
    # An upward import is seen: core/step.py would break the rule if it imported the run layer.
    assert _layer("sgrad.run.build") == "run" and RANK["run"] > RANK["core"]
    assert "sgrad.models.network" in _imports(PACKAGE / "core" / "dni.py")


def test_readme_lists_every_preset_dataset_and_mode():
    import itertools
    import re

    from conftest import ROOT
    from sgrad.modes import RULES
    readme = (ROOT / "README.md").read_text()

    def expand(token: str) -> set[str]:
        parts = re.split(r"\{([^}]*)\}", token)  # a_{b,c}_d -> a_b_d, a_c_d
        options = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
        return {"".join(combo) for combo in itertools.product(*options)}
    named = set().union(*(expand(t) for t in re.findall(r"`([a-z0-9_{},]+)`", readme)))
    for group in ("exp", "dataset", "mode"):
        missing = {p.stem for p in (ROOT / "configs" / group).glob("*.yaml")} - named
        assert not missing, f"README does not name {group} {sorted(missing)}"
    assert set(RULES) <= named
