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
# The paper's width, 3 epochs, one seed (cnn_128ch/; DNI last, stopped unfinished: see README.md):
sgrad-train -m +exp=decoupled_fashion_mnist_cnn model.channels=128 sg.conv_channels=128 trainer.epochs=3 seed=0 \
    mode=backprop,dgl,ddg,cdni,dni trainer.progress=false hydra.sweep.dir=multirun/decoupled/cnn128
python scripts/report.py multirun/decoupled/cnn128 --out results/decoupled/cnn_128ch
# Throughput per mode on two processes pinned to one core each (the machine otherwise idle):
python scripts/bench.py --processes 2 --modes backprop,dni,cdni,dgl,ddg --chunk 50 --chunks 4 \
    --out results/bench/processes.md
