"""Training throughput per mode on one device, next to the measured matmul peak, with each step's memory.

    python scripts/bench.py [--models fcn3,fcn4,fcn6,cnn4] [--batch 64,256] [--out results/bench/single_device.md]
    python scripts/bench.py --exp bench_peer_mlp --modes backprop,dni,cdni,dgl,ddg
    python scripts/bench.py --exp text_transformer --modes backprop,dni,cdni,dgl,ddg,fr  (tokens/s)
    python scripts/bench.py --exp copy_dni --modes backprop,dni,cdni  (the LSTM: a step is one window)

Times the same compiled chunk of steps that `sgrad-train` runs (data on the device, batches gathered inside
jit), after a warm-up chunk, and reads one step's FLOPs and memory from XLA's cost and memory analyses of that
step compiled alone. Writes a markdown table with the machine. Across devices or processes:
scripts/bench_devices.py, scripts/bench_processes.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np
from omegaconf import OmegaConf

from bench_networks import exp_cfg, paper_cfg, setup
from sgrad.core.step import make_train_step
from sgrad.devices import conv_library
from sgrad.devices.chunk import make_chunk_runner, preprocess
from sgrad.run.provenance import git_commit, machine
from timing import chunk_seconds, flops, matmul_peak, memory


def bench_one(cfg, spec: str, chunk: int, chunks: int) -> dict:
    """One row: `cfg` in the mode `spec` names (bench_networks), `chunks` chunks of `chunk` steps."""
    cfg = OmegaConf.merge(cfg, {"trainer": {"log_every": chunk}})
    model, layers, batch = str(cfg.model.name), cfg.model.layers, cfg.trainer.batch_size
    net, tx, state, _, xs, ys, idx, (mean, std), settings = setup(cfg)
    train_step = make_train_step(net, tx, settings)
    # XLA counts a loop body once, so the FLOPs come from one step (as the loop runs it) compiled on its own.
    x0 = preprocess(xs[:batch], mean, std)
    step = jax.jit(partial(train_step, diagnostics=False)).lower(state, x0, ys[:batch]).compile()
    runner = make_chunk_runner(train_step, mean, std)
    elapsed = chunk_seconds(runner, state, xs, ys, jax.device_put(idx), chunks)
    steps = chunk * chunks
    # A Transformer's example is a window of model.context tokens.
    tokens = cfg.model.context if model == "transformer" else None
    return {"model": f"{model}{layers}", "mode": spec, "batch": batch, "steps_per_sec": steps / elapsed,
            "tokens_per_sec": tokens and steps * batch * tokens / elapsed,
            "examples_per_sec": steps * batch / elapsed, "flops_per_sec": flops(step) * steps / elapsed,
            **memory(step)}


def bench_sequence(cfg, spec: str, chunk: int, chunks: int) -> dict:
    """One row for the LSTM of a sequence preset (+exp=copy_dni, ...): the chunk of windows `sgrad-train` runs,
    on the task's own generated data. A step is one window of trainer.bptt time steps of every sequence."""
    from sgrad.run.sequence import SequenceTask
    cfg = OmegaConf.merge(cfg, {"trainer": {"log_every": chunk}, "log": {"grad_probe_every": 0}})
    task = SequenceTask(cfg)
    state, data = task.init(), task.chunk_data(0, chunk)
    step = jax.jit(lambda s, *d: task.step(s, *task.batch_at(*d, 0))).lower(state, *data).compile()
    n = np.int32(chunk)
    state, m = task.runner(state, *data, n)  # compiles
    times = []
    for _ in range(chunks):
        t = time.perf_counter()
        state, m = task.runner(state, *data, n)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t)
    elapsed = float(np.median(times)) * chunks
    steps, batch, window = chunk * chunks, cfg.trainer.batch_size, cfg.trainer.bptt
    return {"model": f"lstm{cfg.model.hidden}", "mode": spec, "batch": batch, "steps_per_sec": steps / elapsed,
            "tokens_per_sec": steps * batch * window / elapsed, "examples_per_sec": steps * batch / elapsed,
            "flops_per_sec": flops(step) * steps / elapsed, **memory(step)}


def peak_steps(row: dict, peak: float) -> float:
    """Steps/s if every FLOP of the step ran at `peak` FLOP/s: the roofline for this step on this machine."""
    return peak / (row["flops_per_sec"] / row["steps_per_sec"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fcn3,fcn4,fcn6", help="comma list of fcnN / cnnN")
    ap.add_argument("--exp", help="bench this preset (e.g. bench_peer_mlp) in every mode instead of --models")
    ap.add_argument("--modes", default="backprop,dni,cdni,dni:sg.hidden_layers=0",
                    help="comma list of MODE[:KEY=VALUE...] (a mode and the overrides of its row)")
    ap.add_argument("--batch", default="64,256")
    ap.add_argument("--chunk", type=int, default=50, help="steps per compiled chunk")
    ap.add_argument("--chunks", type=int, default=4, help="timed chunks after the warm-up")
    ap.add_argument("--out", type=Path, default=Path("results/bench/single_device.md"))
    ap.add_argument("--peak-size", type=int, default=2048,
                    help="n of the n x n matmul chain that measures the peak (smaller: a lower, quicker peak)")
    args = ap.parse_args()

    peak = matmul_peak(args.peak_size)
    print(f"float32 matmul peak: {peak / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    if args.exp:
        configs = [(exp_cfg(args.exp, spec), spec) for spec in args.modes.split(",")]
    else:
        configs = []
        for spec in args.models.split(","):
            model, layers = spec.rstrip("0123456789"), int(spec[len(spec.rstrip("0123456789")):])
            for batch in map(int, args.batch.split(",")):
                configs += [(paper_cfg(model, layers, spec, batch), spec) for spec in args.modes.split(",")]
    for cfg, spec in configs:
        r = (bench_sequence if str(cfg.model.name) == "lstm" else bench_one)(cfg, spec, args.chunk, args.chunks)
        rows.append(r)
        batch, mode = r["batch"], r["mode"]
        print(f"{r['model']:6s} batch {batch:4d} {mode:9s} {r['steps_per_sec']:9.1f} steps/s "
              f"{r['examples_per_sec']:10.0f} ex/s {r['flops_per_sec'] / 1e9:7.1f} GFLOP/s "
              f"({100 * r['flops_per_sec'] / peak:.0f}% of peak), peak {r.get('peak_mib', float('nan')):.1f} MiB", flush=True)

    m = machine()
    lines = ["# Single-device training throughput", "",
             f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), platform {m['platform']} ({m['device']}), "
             f"jax {m['jax']}, python {m['python']}.",
             f"Commit: {git_commit()}.",
             f"Command: `python scripts/bench.py {' '.join(sys.argv[1:])}`".rstrip() + ".",
             f"Measured float32 matmul peak ({args.peak_size}² chain, same run): {peak / 1e9:.1f} GFLOP/s.",
             f"Max pooling: {os.environ.get('SGRAD_MAX_POOL') or 'chosen by measurement'} "
             "(SGRAD_MAX_POOL, sgrad/models/pooling.py).",
             f"Convolutions on XLA:CPU: {os.environ.get('SGRAD_CPU_CONV') or 'chosen by measurement'}"
             f"{' (' + ', '.join(conv_library.chosen()) + ')' if conv_library.chosen() else ''} "
             "(SGRAD_CPU_CONV, sgrad/devices/conv_library.py).",
             "", (f"The preset `+exp={args.exp}` in each mode, composed by Hydra as `sgrad-train` composes it."
                  if args.exp else "Paper settings: FCN width 256 with batch norm; DNI SG = 2×1024 hidden layers; "
                  "cDNI SG = linear on [h, one-hot y]; `dni:sg.hidden_layers=0` = DNI with a linear SG; Adam.") + " Each figure is from the median "
             f"of {args.chunks} chunks of {args.chunk} steps after a warm-up chunk; FLOPs from XLA's cost analysis.",
             "`steps/s at the peak` is the bound this machine puts on a step: steps/s if every FLOP of the step ran "
             "at the measured matmul peak. Memory is XLA's analysis of one step compiled alone (per device): `peak` "
             "its arguments (parameters, optimizer and batch), outputs and working buffers at the worst point, "
             "`working` the buffers alone (the activations kept for the backward pass live there).",
             "A Transformer's example is a window of `model.context` tokens (tokens/s = examples/s × context); an "
             "LSTM's step is one window of `trainer.bptt` time steps of each of the batch's sequences (tokens/s: "
             "time steps/s, summed over the batch).",
             "", "| model | batch | mode | steps/s | examples/s | tokens/s | GFLOP/s | % of matmul peak | "
             "steps/s at the peak | peak MiB | working MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bound = peak_steps(r, peak)
        lines.append(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['steps_per_sec']:.1f} | "
                     f"{r['examples_per_sec']:.0f} | "
                     f"{'–' if r['tokens_per_sec'] is None else format(r['tokens_per_sec'], '.0f')} | "
                     f"{r['flops_per_sec'] / 1e9:.1f} | "
                     f"{100 * r['flops_per_sec'] / peak:.0f}% | {bound:.{0 if bound >= 10 else 1}f} | "
                     f"{r.get('peak_mib', float('nan')):.1f} | {r.get('temp_mib', float('nan')):.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
