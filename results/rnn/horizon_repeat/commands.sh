#!/bin/bash
# Repeat Copy at T=2 with the budget of results/rnn/horizon (12,000 time steps: 6000 windows of 2), seeds 0-2:
# truncated BPTT, DNI, DNI + aux (the presets), and DNI with M refit by least squares (sg.optim.name=rls) toward
# λ-return targets (λ=0.9 over 8 windows), the setting that extended Copy's horizon there.
# Run from the repository root at the commit named in table.md (runs.csv has it per run); two runs at a time on
# this 2-core machine.
run() {  # name overrides...
  local name=$1; shift
  python -m sgrad.cli "$@" trainer.bptt=2 trainer.steps=6000 log.grad_probe_every=500 \
    checkpoint.every=0 trainer.progress=false hydra.run.dir=outputs/rnn_horizon_repeat/T2/$name
}
export -f run
for seed in 0 1 2; do
  echo "rlsl_s$seed +exp=repeat_copy_dni sg.optim.name=rls sg.trace_lambda=0.9 sg.trace_windows=8 seed=$seed"
  echo "bptt_s$seed +exp=repeat_copy_backprop seed=$seed"
  echo "dni_s$seed +exp=repeat_copy_dni seed=$seed"
  echo "aux_s$seed +exp=repeat_copy_dni_aux seed=$seed"
done | xargs -P2 -L1 bash -c 'run "$@"' _
python scripts/report_recurrent.py outputs/rnn_horizon_repeat --out results/rnn/horizon_repeat
