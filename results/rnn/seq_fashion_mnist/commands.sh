#!/bin/bash
# Sequential Fashion-MNIST (Debian's dataset-fashion-mnist): an LSTM of 128 units names the class at an image's
# last step: truncated BPTT against DNI (the preset's: a tenth of ĝ after 300 windows of M alone, M on tanh(c)),
# equal windows; and DNI with the oracle ĝ (the true gradient of the rest of the image: what a perfect M gives).
# Run from the repository root at the commit in table.md.
# Row by row (28 steps an image) at T=2 and T=4, 3 seeds, 3000 windows:
python -m sgrad.cli -m +exp=seq_fashion_mnist_backprop,seq_fashion_mnist_dni dataset.pixels_per_step=28 \
  trainer.bptt=2,4 seed=0,1,2 trainer.steps=3000 trainer.eval_every=500 log.grad_probe_every=500 \
  trainer.progress=false hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir=multirun/seq_fmnist/rows
# The oracle at T=4 (7 windows ahead: a whole image):
python -m sgrad.cli -m +exp=seq_fashion_mnist_dni dataset.pixels_per_step=28 trainer.bptt=4 seed=0,1,2 \
  sg.oracle=true sg.trace_windows=7 trainer.steps=3000 trainer.eval_every=500 log.grad_probe_every=500 \
  trainer.progress=false hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweep.dir=multirun/seq_fmnist/oracle
python scripts/report_recurrent.py multirun/seq_fmnist/rows multirun/seq_fmnist/oracle \
  --out results/rnn/seq_fashion_mnist/rows
# Pixel by pixel (784 steps an image) at T=28, one seed, 4000 windows (140 images a row):
python -m sgrad.cli -m +exp=seq_fashion_mnist_backprop,seq_fashion_mnist_dni trainer.steps=4000 \
  trainer.eval_every=1000 log.grad_probe_every=1000 trainer.progress=false hydra/launcher=joblib \
  hydra.launcher.n_jobs=2 hydra.sweep.dir=multirun/seq_fmnist/pixels
python scripts/report_recurrent.py multirun/seq_fmnist/pixels --out results/rnn/seq_fashion_mnist/pixels
