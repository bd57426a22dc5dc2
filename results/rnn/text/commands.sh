#!/bin/bash
# Truncated BPTT vs DNI vs DNI + aux on real English text (Debian's fortunes package,
# /usr/share/games/fortunes, 2.32 M / 129 k / 129 k characters), equal steps (3000 windows) at each T.
# Run from the repository root at the commit named in table.md (runs.csv has it per run).
# backprop and DNI (commit 2b9a620; DNI + aux of that sweep used aux_weight 1, superseded):
for T in 2 3 5 8; do
  python -m sgrad.cli -m +exp=ptb_char_backprop,ptb_char_dni,ptb_char_dni_aux dataset=text \
    dataset.dir=/usr/share/games/fortunes trainer.bptt=$T trainer.steps=3000 trainer.eval_every=500 \
    log.grad_probe_every=500 trainer.progress=false hydra.sweep.dir=multirun/rnn_text/T$T
done
# DNI + aux with the preset's aux_weight 0.01:
for T in 2 3 5 8; do
  python -m sgrad.cli -m +exp=ptb_char_dni_aux dataset=text \
    dataset.dir=/usr/share/games/fortunes trainer.bptt=$T trainer.steps=3000 trainer.eval_every=500 \
    log.grad_probe_every=500 trainer.progress=false hydra.sweep.dir=multirun/rnn_text_aux/T$T
done
# The report (backprop and DNI jobs of the first sweep, the second sweep's aux runs):
python scripts/report_recurrent.py multirun/rnn_text/T*/0 multirun/rnn_text/T*/1 multirun/rnn_text_aux \
  --out results/rnn/text
