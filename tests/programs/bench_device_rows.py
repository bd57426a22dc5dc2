"""bench.py's device sweep on 2 CPU devices: every parallel mode gives a row with a positive rate."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))  # bench is a script, not a module of the package
import bench  # noqa: E402

rows = bench.device_rows(2, ["backprop", "cdni", "dgl", "ddg"], 4, 32, chunk=2, chunks=1)
assert all(r["examples_per_sec"] > 0 for r in rows)
print([(r["mode"], r["parallel"], r["devices"], r["modules"]) for r in rows])
