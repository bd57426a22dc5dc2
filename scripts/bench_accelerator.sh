#!/usr/bin/env bash
# Everything the first machine with accelerators should measure, in one command and under 10 minutes on GPUs:
#  1. single-device throughput of every mode next to the measured matmul peak (FCN 4 and 6 layers and the
#     paper's 3-layer CNN at 128 channels, batch 256 and 1024) -> results/bench/accelerator_<kind>.md;
#  2. with two or more devices, parallel=data and parallel=pipeline over all of them (FCN 8x256, batch 1024; DNI
#     also as a pipeline with sg_share=0.55),
#     and with four or more an even count also a pipeline x 2 replicas -> results/bench/accelerator_<kind>_devices.md;
#  3. time to accuracy on Fashion-MNIST (scripts/time_to_accuracy.py's recipe: FCN 8x256, batch 4096, Adam decaying
#     over 700 steps, 2 seeds): backprop and
#     every decoupled mode on one device and, with two or more, in its data and pipeline layouts over them
#     -> results/bench/accelerator_<kind>_time_to_accuracy.md/.png.
# SGRAD_BENCH_OUT=DIR writes elsewhere (SGRAD_BENCH_RUNS=DIR: the time-to-accuracy run dirs, outputs/ by
# default); SGRAD_BENCH_QUICK=1 runs tiny sizes and a few modes (how the tests run it on CPU: each step of the
# script once, every mode's rows being bench_devices.py's own test).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${SGRAD_BENCH_OUT:-results/bench}
read -r platform count kind < <(python -c "import jax; d = jax.devices(); \
print(jax.default_backend(), len(d), d[0].device_kind.replace(' ', '_'))")
if [[ ${SGRAD_BENCH_QUICK:-0} == 1 ]]; then
    single=(--models fcn3 --batch 16 --chunk 2 --chunks 1 --modes dni:sg.hidden_layers=0 --peak-size 256)
    multi=(--layers 4 --batch 32 --chunk 2 --chunks 1 --modes cdni)
    tta=(--layers 3 --batch 64 --steps 4 --eval-every 2 --seeds 0 --targets 0.2)
    one=backprop:none
    several=
else
    single=(--models fcn4,fcn6,cnn3 --batch 256,1024 --chunk 50 --chunks 4
            --modes backprop,dni,cdni,dni:sg.hidden_layers=0,dgl,ddg)
    multi=(--layers 8 --batch 1024 --chunk 50 --chunks 4
           --modes backprop,dni,dni:parallel=pipeline:sg_share=0.55,cdni,dgl,ddg)
    tta=(--seeds 0,1)  # the script's own recipe (its defaults), as results/bench/time_to_accuracy_b4096.md ran it
    one=backprop:none,dni:none,cdni:none,dgl:none,ddg:none,fr:none
    several=backprop:data,dni:data,dni:pipeline,cdni:data,cdni:pipeline,dgl:data,dgl:pipeline,ddg:pipeline,fr:pipeline
fi
echo "$count $platform device(s) of kind $kind"
python scripts/bench.py "${single[@]}" --out "$out/accelerator_${kind}.md"
if (( count >= 2 )); then
    replicas=1
    if (( count >= 4 && count % 2 == 0 )); then replicas=2; fi
    JAX_PLATFORMS=$platform python scripts/bench_devices.py --devices "$count" --replicas "$replicas" "${multi[@]}" \
        --out "$out/accelerator_${kind}_devices.md"
fi
layouts=$one
if (( count >= 2 )) && [[ -n $several ]]; then layouts+=",$several"; fi
python scripts/time_to_accuracy.py --launch devices --layouts "$layouts" "${tta[@]}" \
    --workdir "${SGRAD_BENCH_RUNS:-outputs/accelerator_${kind}_time_to_accuracy}" --out "$out/accelerator_${kind}_time_to_accuracy"
