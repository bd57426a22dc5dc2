cd /tmp/wt_tt
python -m sgrad.cli -m +exp=two_timescale_dni sg.scale=1.0,0.0 seed=0,1,2 trainer.progress=false hydra.sweep.dir=/tmp/tt_results/dni
python -m sgrad.cli -m +exp=two_timescale_dni mode=backprop seed=0,1,2 trainer.progress=false hydra.sweep.dir=/tmp/tt_results/backprop
