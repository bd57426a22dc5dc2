"""The mode rule is the one switch: every task asks the same rule object, and outside sgrad/modes/ only the files that
build a network ask what a mode is."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import make_cfg
from sgrad.modes import RULES
from sgrad.run.build import build_decoupled, build_recurrent_net, build_two_clock_net

PACKAGE = Path(__file__).resolve().parent.parent / "sgrad"
# A mode's flags, or whether it has an SG model: what a file outside sgrad/modes/ would branch on.
FLAG = re.compile(r"\.(interface|conditioned|synthetic|synthetic_inputs|greedy|delayed)\b(?!\s*import)"
                  r"|sg_model is (not )?None")
# Building a network decides which models sit on its interfaces: the library entry, the runner's builder, the
# Network record itself.
BUILDERS = {"decoupled.py", "run/build.py", "models/network.py"}


def _askers() -> dict[str, list[str]]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("modes/"):
            continue
        lines = [line.strip() for line in path.read_text().splitlines()
                 if FLAG.search(line) and not line.lstrip().startswith(("from ", "import ", "#"))]
        if lines:
            found[rel] = lines
    return found


def test_at_most_three_files_outside_the_modes_ask_a_modes_flags():
    askers = _askers()
    assert len(askers) <= 3 and set(askers) <= BUILDERS, askers


def test_the_flag_scan_finds_a_file_that_asks():
    # The scan itself: the builders do ask (if it found nothing anywhere, the test above could not fail).
    assert {"decoupled.py", "run/build.py"} <= set(_askers())


def test_every_task_asks_the_same_rule_object():
    for mode in ("backprop", "dni", "cdni"):
        cfg = make_cfg("model.name=lstm", "dataset.name=copy", f"mode={mode}")
        assert build_recurrent_net(cfg, 4, "bits").rule is RULES[mode]
    for mode in ("backprop", "dni"):
        cfg = make_cfg("dataset.name=two_timescale", "model.name=lstm", f"mode={mode}")
        assert build_two_clock_net(cfg).rule is RULES[mode]
    cfg = make_cfg("mode=dgl")
    assert build_decoupled(cfg, (28, 28, 1), 10, 10).rule is RULES["dgl"]


def test_a_modes_tasks_are_the_ones_it_says_how_to_run():
    assert set(RULES["backprop"].tasks) == {"classification", "sequence", "two_clocks"}
    assert set(RULES["cdni"].tasks) == {"classification", "sequence"}
    assert RULES["dgl"].tasks == RULES["ddg"].tasks == RULES["dni_full"].tasks == ("classification",)
    for name, rule in RULES.items():
        assert (rule.stage is None) == ("pipeline" not in rule.parallel), name
