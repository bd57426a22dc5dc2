#!/bin/bash
# $1: list of T values
cd /tmp/wt_cdni
for T in $1; do
  python -m sgrad.cli -m +exp=copy_dni,copy_cdni trainer.bptt=$T trainer.steps=$((48000 / T)) \
    trainer.progress=false hydra.sweep.dir=/tmp/rnn_results_v2/copy/T$T
done
