#!/bin/bash
# Copy at T=2 and T=3 with the same budget in time steps (12,000: 6000 windows of 2, 4000 of 3), seeds 0-2:
# truncated BPTT, DNI, DNI + aux (the presets), and DNI with M refit by least squares (sg.optim.name=rls)
# toward λ-return targets (λ=0.9 over 8 windows); at T=2 also DNI with an oracle ĝ (sg.oracle: the core steps
# along the true gradient of the next 8 windows, 16 time steps, which hold a whole episode up to length 7).
# Run from the repository root at the commit named in table.md (runs.csv has it per run, and the run dirs these
# results came from); two runs at a time on this 2-core machine.
run() {  # T name overrides...
  local T=$1 name=$2; shift 2
  python -m sgrad.cli "$@" trainer.bptt=$T trainer.steps=$((12000 / T)) log.grad_probe_every=500 \
    checkpoint.every=0 trainer.progress=false hydra.run.dir=outputs/rnn_horizon/T$T/$name
}
export -f run
for T in 2 3; do
  for seed in 0 1 2; do
    echo "$T bptt_s$seed +exp=copy_backprop seed=$seed"
    echo "$T dni_s$seed +exp=copy_dni seed=$seed"
    echo "$T aux_s$seed +exp=copy_dni_aux seed=$seed"
    echo "$T rlsl_s$seed +exp=copy_dni sg.optim.name=rls sg.trace_lambda=0.9 sg.trace_windows=8 seed=$seed"
  done
  [ $T = 2 ] && for seed in 0 1 2; do echo "$T oracle_s$seed +exp=copy_dni sg.oracle=true sg.trace_windows=8 seed=$seed"; done
done | xargs -P2 -L1 bash -c 'run "$@"' _
# M by least squares without λ-returns, seed 0 only (it solved what DNI does, so its other seeds were not run):
run 2 rls_s0 +exp=copy_dni sg.optim.name=rls seed=0
python scripts/report_recurrent.py outputs/rnn_horizon --out results/rnn/horizon
