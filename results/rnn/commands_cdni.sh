#!/bin/bash
# $1: list of T values
# Run from the repository root, at the commit named in the results' table.
for T in $1; do
  python -m sgrad.cli -m +exp=copy_dni,copy_cdni trainer.bptt=$T trainer.steps=$((48000 / T)) \
    trainer.progress=false hydra.sweep.dir=multirun/rnn_cdni/copy/T$T
done
