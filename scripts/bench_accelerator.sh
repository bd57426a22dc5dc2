#!/usr/bin/env bash
# Single-device throughput of every mode on this machine's accelerator, next to its measured matmul peak:
# FCN 4 and 6 layers and the paper's 3-layer CNN (128 channels), batch 256 and 1024. Sized to finish in under
# 8 minutes on one GPU; extra arguments go to scripts/bench.py and override these (the tests run it on CPU
# with tiny settings). Writes results/bench/accelerator_<device kind>.md unless --out is given.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=$(python -c "import jax; print(jax.devices()[0].device_kind.replace(' ', '_'))")
python scripts/bench.py --models fcn4,fcn6,cnn3 --modes backprop,dni,cdni,dni_linear,dgl,ddg --batch 256,1024 \
    --chunk 50 --chunks 4 --out "results/bench/accelerator_${kind}.md" "$@"
