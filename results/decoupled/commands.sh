#!/usr/bin/env bash
# The decoupling methods side by side (backprop, DNI, cDNI, DGL, DDG; FR in the FCN preset), as run for
# results/decoupled/. Run from the repository root.
# Each sweep writes its run dirs; scripts/report.py turns them into table.md, runs.csv, curves.png,
# diagnostics.png and provenance.md.
set -euo pipefail
sgrad-train -m +exp=decoupled_fashion_mnist_fcn trainer.progress=false hydra.sweep.dir=multirun/decoupled/fcn   # 72 runs, 34 min
python scripts/report.py multirun/decoupled/fcn --out results/decoupled/fcn
sgrad-train -m +exp=decoupled_fashion_mnist_cnn trainer.progress=false hydra.sweep.dir=multirun/decoupled/cnn
python scripts/report.py multirun/decoupled/cnn --out results/decoupled/cnn
# Throughput per mode on two processes pinned to one core each (the machine otherwise idle):
python scripts/bench.py --processes 2 --modes backprop,dni,cdni,dgl,ddg --chunk 50 --chunks 4 \
    --out results/bench/processes.md
