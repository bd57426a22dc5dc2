#!/bin/bash
# $1 = task (copy / repeat_copy)
# Run from the repository root, at the commit named in the results' table.
for T in 2 3 4 5 8; do
  steps=$((48000 / T))
  python -m sgrad.cli -m +exp=${1}_backprop,${1}_dni,${1}_dni_aux trainer.bptt=$T trainer.steps=$steps \
    trainer.progress=false hydra.sweep.dir=multirun/rnn/$1/T$T
done
