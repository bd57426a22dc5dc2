"""A pipelined run through the loop learns, and resumed at step 100 it equals the uninterrupted run.

argv: the IDX data dir, a scratch dir, then overrides for every run (e.g. sg_share=0.5: the stash of rows each
device keeps for its copy of the SG model below is in the checkpoint too; mode=dgl first_share=0.25: the rows of
module 0's output device 1 made on its copy)."""

import json
import sys

from conftest import make_cfg
from sgrad.run.checkpoint import Checkpoints
from sgrad.run import train_and_evaluate

data, scratch, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]


def run(workdir, steps, *extra):
    cfg = make_cfg("dataset.name=idx", f"dataset.dir={data}", "dataset.download=false", "parallel=pipeline",
                   *([] if any(o.startswith("mode=") for o in overrides) else ["mode=cdni"]), "model.layers=3", "sg.hidden_layers=0", f"trainer.steps={steps}",
                   "checkpoint.every=50", "trainer.eval_every=50", *overrides, *extra)
    return train_and_evaluate(cfg, workdir)


full = run(f"{scratch}/full", 200)
print(json.dumps({"accuracy": full["test/accuracy"], "status": full["status"]}))
# Stopped at 100 and resumed: the in-flight activations and targets are part of the checkpoint.
run(f"{scratch}/resumed", 100)
resumed = run(f"{scratch}/resumed", 200)
b = Checkpoints(f"{scratch}/resumed/checkpoints", read_only=True)
same = all(resumed[k] == full[k] for k in ("test/loss", "train/loss", "sg/loss/1", "aux/loss/1") if k in full)
print(json.dumps({"same": same, "steps": b.steps()}))
