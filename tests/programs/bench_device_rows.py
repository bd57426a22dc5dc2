"""bench.py's device sweep on argv[1] CPU devices with argv[2] replicas: every parallel mode gives a row with a
positive rate."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))  # bench is a script, not a module of the package
import bench  # noqa: E402

rows = bench.device_rows(int(sys.argv[1]), ["backprop", "cdni", "dgl", "ddg"], 4, 32, chunk=2, chunks=1,
                        replicas=int(sys.argv[2]))
assert all(r["examples_per_sec"] > 0 for r in rows)
print([(r["mode"], r["parallel"], r["devices"], r["modules"], r["replicas"]) for r in rows])
