"""Every parallel layout stopped by SIGTERM inside a logged chunk run as one-step dispatches, and resumed, equals
the uninterrupted run (one dispatch per chunk) bit for bit; run on 4 CPU devices.

argv: the IDX data dir, a scratch dir."""

import sys
from pathlib import Path

from conftest import assert_same_run, make_cfg, stop_inside_a_chunk
from sgrad.run import train_and_evaluate
from sgrad.run.record import Preempted

data, scratch = sys.argv[1], Path(sys.argv[2])
LAYOUTS = {
    "data": ("parallel=data", "mode=dni"),
    "pipeline": ("parallel=pipeline", "mode=dni", "model.layers=2"),
    "pipeline-ddg": ("parallel=pipeline", "mode=ddg", "model.layers=2"),
    "pipeline-replicas": ("parallel=pipeline", "replicas=2", "mode=cdni", "model.layers=2"),
}
runs = {}
for name, layout in LAYOUTS.items():
    cfg = make_cfg("dataset.name=idx", f"dataset.dir={data}", "dataset.download=false", "sg.hidden_layers=0",
                   "trainer.steps=30", "trainer.log_every=10", "checkpoint.every=20", "trainer.eval_every=20",
                   "log.grad_probe_every=20", *layout)
    train_and_evaluate(cfg, scratch / name / "ref")
    runs[name] = cfg

# One-step dispatches from here on: the 13th dispatch ends at step 13, inside the second logged chunk.
for name, cfg in runs.items():
    stop_inside_a_chunk(setattr, after=13)
    run = scratch / name / "run"
    try:
        train_and_evaluate(cfg, run)
        raise AssertionError(f"{name}: the run was not stopped")
    except Preempted as stopped:
        assert stopped.step == 13, (name, stopped.step)
    assert (run / "checkpoints" / "13" / "chunk_sums.npz").is_file(), name
    train_and_evaluate(cfg, run)
    assert_same_run(run, scratch / name / "ref")
    print(name, "ok", flush=True)
