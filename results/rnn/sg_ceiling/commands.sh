#!/usr/bin/env bash
# The runs behind results/rnn/sg_ceiling/table.md: Copy at T=2, 6000 windows, seed 0, each a setting of
# scripts/recurrent_probe.py's table (the first three) or a learner for M tried against it; then the ceiling of
# every run's last checkpoint. Run dirs under $DIR (outputs/sg_ceiling by default).
set -euo pipefail
DIR=${DIR:-outputs/sg_ceiling}
run() { name=$1; shift; sgrad-train +exp=copy_dni trainer.bptt=2 trainer.steps=6000 log.grad_probe_every=500 seed=0 "$@" \
        hydra.run.dir="$DIR/$name"; }
run dni
run still optim.lr=1e-12 sg.optim.lr=1e-3 dataset.start_length=4
run cdni_l1 mode=cdni sg.trace_lambda=1.0 sg.trace_windows=8
run adam3e3 mode=cdni sg.trace_lambda=1.0 sg.trace_windows=8 sg.optim.lr=3e-3
run rls098 mode=cdni sg.trace_lambda=1.0 sg.trace_windows=8 sg.optim.name=rls
run rls0995 mode=cdni sg.trace_lambda=1.0 sg.trace_windows=8 sg.optim.name=rls sg.optim.forget=0.995
run rls09 mode=cdni sg.trace_lambda=1.0 sg.trace_windows=8 sg.optim.name=rls sg.optim.forget=0.9
python scripts/sg_ceiling.py "$DIR"/{dni,still,cdni_l1,adam3e3,rls098,rls0995,rls09} --streams 64 \
       --out results/rnn/sg_ceiling/table.md
