#!/bin/bash
# Copy at T=5 and T=8 with the budget of results/rnn/horizon (12,000 time steps: 2400 windows of 5, 1500 of 8),
# seeds 0-2, the presets' 256-unit LSTM: truncated BPTT, DNI, DNI + aux, and DNI with M refit by least squares
# (sg.optim.name=rls) toward λ-return targets (λ=0.9 over 8 windows). The T=2 and T=3 columns are
# results/rnn/horizon's.
# Run from the repository root at the commit named in table.md (runs.csv has it per run); two runs at a time on
# this 2-core machine.
run() {  # T name overrides...
  local T=$1 name=$2; shift 2
  python -m sgrad.cli "$@" trainer.bptt=$T trainer.steps=$((12000 / T)) log.grad_probe_every=500 \
    checkpoint.every=0 trainer.progress=false hydra.run.dir=outputs/rnn_horizon_t5_t8/T$T/$name
}
export -f run
for T in 5 8; do for seed in 0 1 2; do
  echo "$T rlsl_s$seed +exp=copy_dni sg.optim.name=rls sg.trace_lambda=0.9 sg.trace_windows=8 seed=$seed"
  echo "$T bptt_s$seed +exp=copy_backprop seed=$seed"
  echo "$T dni_s$seed +exp=copy_dni seed=$seed"
  echo "$T aux_s$seed +exp=copy_dni_aux seed=$seed"
done; done | xargs -P2 -L1 bash -c 'run "$@"' _
python scripts/report_recurrent.py outputs/rnn_horizon_t5_t8 --out results/rnn/horizon_t5_t8
