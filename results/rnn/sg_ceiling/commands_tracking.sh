#!/usr/bin/env bash
# The runs behind results/rnn/sg_ceiling/tracking.md: does M fail to follow a moving target, or fail to learn at all?
# Copy at T=2, cDNI with M's λ=1 return over 8 windows, seed 0 (as `cdni_l1` in table.md), at commit 528877c (M
# fits nothing before a new sequence). Run dirs under $DIR (outputs/sg_ceiling by default).
set -euo pipefail
DIR=${DIR:-outputs/sg_ceiling}
run() { name=$1; shift; sgrad-train +exp=copy_dni trainer.bptt=2 log.grad_probe_every=500 seed=0 mode=cdni \
        sg.trace_lambda=1.0 sg.trace_windows=8 "$@" hydra.run.dir="$DIR/$name"; }
# The core held still (learning rate 1e-12) at length 4: Adam's M, and M refit by least squares.
run still_adam trainer.steps=2500 optim.lr=1e-12 sg.optim.lr=1e-3 dataset.start_length=4
run still_rls trainer.steps=1000 log.grad_probe_every=250 optim.lr=1e-12 sg.optim.lr=1e-3 dataset.start_length=4 \
    sg.optim.name=rls
# The core learning, a checkpoint every 10 windows over the last 250: how fast the best M of one moment goes stale.
run stale_10 trainer.steps=6200 trainer.log_every=10 checkpoint.every=10 checkpoint.keep=26
# The design change: four times the sequences per window, so that M's fit needs fewer windows of a moving target.
run b256_adam trainer.steps=6000 trainer.batch_size=256
# The refit at batch 256 costs 0.17 s a window here: it ran 6000 and was stopped (SIGTERM) at window 1850, where the
# table reads it (steps=1850 trains the same windows).
run b256_rls09 trainer.steps=1850 trainer.batch_size=256 sg.optim.name=rls sg.optim.forget=0.9
python scripts/sg_ceiling.py "$DIR"/{still_adam,still_rls,stale_10,b256_adam,b256_rls09} --streams 32 --mlp-steps 300 \
       --out results/rnn/sg_ceiling/tracking.md
