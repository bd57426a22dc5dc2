#!/bin/bash
# Repeat Copy at T=3 with twice results/rnn/horizon_repeat's budget: 24,000 time steps (8000 windows), seeds 0-2,
# truncated BPTT and DNI with M refit by least squares toward λ-return targets (λ=0.9 over 8 windows), the setting
# that reached 2.0x BPTT's Copy length at this budget (results/rnn/horizon_24k).
# Run from the repository root at the commit named in table.md (runs.csv has it per run); two runs at a time on
# this 2-core machine.
run() {  # name overrides...
  local name=$1; shift
  python -m sgrad.cli "$@" trainer.bptt=3 trainer.steps=8000 log.grad_probe_every=500 \
    checkpoint.every=0 trainer.progress=false hydra.run.dir=outputs/rnn_horizon_repeat_24k/$name
}
export -f run
{
  for seed in 0 1 2; do
    echo "rlsl_s$seed +exp=repeat_copy_dni sg.optim.name=rls sg.trace_lambda=0.9 sg.trace_windows=8 seed=$seed"
    echo "bptt_s$seed +exp=repeat_copy_backprop seed=$seed"
  done
} | xargs -P2 -L1 bash -c 'run "$@"' _
python scripts/report_recurrent.py outputs/rnn_horizon_repeat_24k --out results/rnn/horizon_repeat_24k
