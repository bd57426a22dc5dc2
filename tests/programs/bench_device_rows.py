"""The parallel benchmarks' device sweep on argv[1] CPU devices with argv[2] replicas: every parallel mode gives a row with a
positive rate."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))  # the benchmarks are scripts, not modules of the package
from parallel_rows import device_rows  # noqa: E402

# A pipeline row (every mode's row is the same code: cdni's) and a pipeline of replicas; the sweep itself
# without the parts (the cost model's inputs). The data rows (the same
# program at 4 devices as at 2) and the parts of a data and a pipeline row: the accelerator script's test
# (bench_devices.py on 2 devices). Which rows a spec gets: test_bench.py's row_plans test.
rows = device_rows(int(sys.argv[1]), ["cdni"], 4, 32, chunk=2, chunks=1, kinds=("pipeline",),
                   replicas=int(sys.argv[2]), parts=False)
assert not any("stage_sec" in r or "shard_sec" in r for r in rows)
assert all(r["examples_per_sec"] > 0 for r in rows)
# Every row, the one-device baselines too, has its compiled program's memory per device.
assert all(r["peak_mib"] > 0 and r["temp_mib"] > 0 for r in rows), rows
print([(r["mode"], r["parallel"], r["devices"], r["modules"], r["replicas"]) for r in rows])
