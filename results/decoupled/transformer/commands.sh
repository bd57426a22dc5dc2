#!/usr/bin/env bash
# The decoupled Transformer (+exp=text_transformer) in every mode it runs, as run for results/decoupled/transformer/.
# Run from the repository root. The fortunes text (tuned on: the preset's learning rate) and, unchanged, a corpus the
# preset was not tuned on (Debian's common-licenses: licence texts, 214k training characters).
set -euo pipefail
sgrad-train -m +exp=text_transformer seed=0,1,2 mode=backprop,dgl,cdni,dni,ddg,fr trainer.progress=false \
    hydra.sweep.dir=multirun/transformer/fortunes
python scripts/report.py multirun/transformer/fortunes --out results/decoupled/transformer/fortunes
sgrad-train -m +exp=text_transformer dataset.dir=/usr/share/common-licenses seed=0 mode=backprop,dgl \
    trainer.progress=false hydra.sweep.dir=multirun/transformer/licenses
python scripts/report.py multirun/transformer/licenses --out results/decoupled/transformer/licenses
# The layout with fewer cuts (two modules of two blocks), DGL, 3 seeds (two_modules/; run as seed 0, then 1,2):
sgrad-train -m +exp=text_transformer model.dni_every=2 seed=0 mode=dgl trainer.progress=false \
    hydra.sweep.dir=multirun/transformer/two_modules
sgrad-train -m +exp=text_transformer model.dni_every=2 seed=1,2 mode=dgl trainer.progress=false \
    hydra.sweep.dir=multirun/transformer/two_modules_seeds12
mkdir -p multirun/transformer/two_modules_all && cp -r multirun/transformer/two_modules multirun/transformer/two_modules_seeds12 multirun/transformer/two_modules_all/
python scripts/report.py multirun/transformer/two_modules_all --out results/decoupled/transformer/two_modules
# Throughput (the machine otherwise idle): tokens/s per mode beside the matmul peak, and two pinned processes.
python scripts/bench.py --exp text_transformer --modes backprop,dni,cdni,dgl,ddg,fr --chunk 20 --chunks 3 \
    --out results/bench/single_device_transformer.md
# Not yet run to the end (stopped for time this session): the same rows across two pinned processes,
# python scripts/bench_processes.py --processes 2 --exp text_transformer --batch 32 --modes backprop,cdni,dgl,ddg \
#     --chunk 10 --chunks 3 --out results/bench/processes_transformer.md
