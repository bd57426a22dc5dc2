"""The parallel benchmarks' device sweep on argv[1] CPU devices with argv[2] replicas: every parallel mode gives a row with a
positive rate."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))  # the benchmarks are scripts, not modules of the package
from parallel_rows import device_rows  # noqa: E402

# The parts (the cost model's inputs) of one data and one pipeline row; the sweep itself without them.
# One mode of each kind of row: data and unlocked pipeline (cdni; backprop's and dgl's rows are the same code), locked
# pipeline (ddg).
# The data rows are the parts call's below (data at 4 devices is the same program as at 2).
rows = device_rows(int(sys.argv[1]), ["cdni", "ddg"], 4, 32, chunk=2, chunks=1, kinds=("pipeline",),
                   replicas=int(sys.argv[2]), parts=False)
assert not any("stage_sec" in r or "shard_sec" in r for r in rows)
parts = device_rows(2, ["cdni"], 4, 32, chunk=2, chunks=1)
pipe = next(r for r in parts if r["parallel"] == "pipeline")
data = next(r for r in parts if r["parallel"] == "data")
assert len(pipe["stage_sec"]) == len(pipe["stage_alone_sec"]) == 2 and min(pipe["stage_sec"]) > 0, pipe
assert data["shard_sec"] > 0 and data["allreduce_sec"] > 0, data
assert all(r["examples_per_sec"] > 0 for r in rows + parts)
# Every row, the one-device baselines too, has its compiled program's memory per device.
assert all(r["peak_mib"] > 0 and r["temp_mib"] > 0 for r in rows + parts), rows + parts
print([(r["mode"], r["parallel"], r["devices"], r["modules"], r["replicas"]) for r in rows + parts])
