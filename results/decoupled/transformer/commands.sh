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
