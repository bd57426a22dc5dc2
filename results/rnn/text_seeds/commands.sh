#!/bin/bash
# Truncated BPTT vs DNI + aux (the preset) vs DNI + aux with λ-return targets for M, on real English text
# (Debian's fortunes, /usr/share/games/fortunes), T=5 (the ptb_char presets'), 3000 windows, seeds 0-2.
# Run from the repository root at the commit named in table.md (runs.csv has it per run); the two sweeps ran
# side by side on this 2-core machine.
common="dataset=text dataset.dir=/usr/share/games/fortunes trainer.bptt=5 trainer.steps=3000 trainer.eval_every=500
        log.grad_probe_every=500 trainer.progress=false seed=0,1,2"
python -m sgrad.cli -m +exp=ptb_char_backprop,ptb_char_dni_aux $common hydra.sweep.dir=multirun/rnn_text_seeds/base &
python -m sgrad.cli -m +exp=ptb_char_dni_aux sg.trace_lambda=0.9 sg.trace_windows=4 $common \
  hydra.sweep.dir=multirun/rnn_text_seeds/lambda
wait
python scripts/report_recurrent.py multirun/rnn_text_seeds --out results/rnn/text_seeds
