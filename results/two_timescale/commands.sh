# Run from the repository root, at the commit named in table.md.
python -m sgrad.cli -m +exp=two_timescale_dni sg.scale=1.0,0.0 seed=0,1,2 trainer.progress=false hydra.sweep.dir=multirun/two_timescale/dni
python -m sgrad.cli -m +exp=two_timescale_dni mode=backprop seed=0,1,2 trainer.progress=false hydra.sweep.dir=multirun/two_timescale/backprop
