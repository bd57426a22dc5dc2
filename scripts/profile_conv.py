"""Where a CNN step's time goes on this backend: each piece of the paper's conv stage timed alone, forward and
gradients, by XLA's native lowering and by the alternatives tried, next to the measured matmul peak.

    python scripts/profile_conv.py [--batch 64] [--out results/bench/conv_profile.md]

The stages are the paper's CNN on 32x32 inputs: a 5x5 convolution 3 -> 128 channels at 32x32, one 128 -> 128
at 16x16 (also its weight gradient inside a compiled loop, as the training chunk runs it), the 128 -> 128 of
cnn4's SG model at 4x4, 3x3 / 2 max and average pooling of the 32x32x128 activation. Ways: lax's convolution
compiled with XLA:CPU's YNNPACK convolutions (its default) and with them off (Eigen), sgrad's convolution
(sgrad/models/convolution.py: canonical gradients, windows x matmul for a kernel larger than its input), and
alternatives tried before: the input gradient as a plain forward convolution (kernel flipped, channels
swapped), the weight gradient from k*k shifted slices (one matmul per kernel row), the forward pass as patches
(jax.lax.conv_general_dilated_patches) x matmul, and max pooling by strided slices (sgrad/models/pooling.py).
Median of 5 calls after one that compiles.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sgrad.devices.conv_library import EIGEN
from sgrad.models.convolution import conv as sgrad_conv
from sgrad.models.partition import seconds
from sgrad.models.pooling import max_pool_slices
from sgrad.run.provenance import git_commit, machine

DN = ("NHWC", "HWIO", "NHWC")


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def conv_patches(x, w):
    k = w.shape[0]
    p = jax.lax.conv_general_dilated_patches(x, (k, k), (1, 1), "SAME", dimension_numbers=DN)
    return p @ jnp.transpose(w, (2, 0, 1, 3)).reshape(-1, w.shape[-1])


def dw_rows(x, g, k):
    p, (_, h, wd, c), o = k // 2, x.shape, g.shape[-1]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    gm = g.reshape(-1, o)
    rows = [jnp.concatenate([xp[:, i:i + h, j:j + wd, :] for j in range(k)], axis=-1).reshape(-1, k * c).T @ gm
            for i in range(k)]
    return jnp.stack([r.reshape(k, c, o) for r in rows])


def conv_rows(batch: int) -> list[tuple[str, str, float, float]]:
    """(piece, way, ms, FLOP/s) for the paper's convolutions and the 4x4 one of cnn4's SG model."""
    out = []
    for h, c, o in ((32, 3, 128), (16, 128, 128), (4, 128, 128)):
        x = jax.random.normal(jax.random.key(0), (batch, h, h, c))
        w = jax.random.normal(jax.random.key(1), (5, 5, c, o)) * 0.05
        g = jax.random.normal(jax.random.key(2), (batch, h, h, o))
        flops = 2 * batch * h * h * 25 * c * o
        dx = lambda f: lambda x, w: jax.vjp(lambda x: f(x, w), x)[1](g)[0]
        dw = lambda f: lambda x, w: jax.vjp(lambda w: f(x, w), w)[1](g)[0]
        ours = lambda x, w: sgrad_conv(x, w, (1, 1), "SAME", dimension_numbers=DN)
        pieces = {
            "forward": [("native, YNNPACK", conv, None), ("native, Eigen", conv, EIGEN),
                        ("sgrad, Eigen", ours, EIGEN), ("patches x matmul", conv_patches, None)],
            "input gradient": [("native, YNNPACK", dx(conv), None), ("native, Eigen", dx(conv), EIGEN),
                               ("sgrad, Eigen", dx(ours), EIGEN),
                               ("forward conv, kernel flipped", lambda x, w: conv(
                                   g, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)), None)],
            "weight gradient": [("native, YNNPACK", dw(conv), None), ("native, Eigen", dw(conv), EIGEN),
                                ("sgrad, Eigen", dw(ours), EIGEN),
                                ("k row matmuls of shifted slices", lambda x, w: dw_rows(x, g, 5), None)],
        }
        if h == 16:  # inside a compiled loop, as the training chunk runs it
            pieces["weight gradient, 3 in a fori_loop"] = [
                # x moved by the carry, so that XLA cannot hoist the gradient out of the loop
                (way, (lambda f: lambda x, w: jax.lax.fori_loop(
                    0, 3, lambda _, v: v + dw(f)(x + v[0, 0, 0, 0], w), w))(f), opt)
                for way, f, opt in (("native, Eigen", conv, EIGEN), ("sgrad, Eigen", ours, EIGEN))]
        for piece, ways in pieces.items():
            for way, f, options in ways:
                if h == 4 and way in ("patches x matmul", "k row matmuls of shifted slices"):
                    continue
                t = seconds(f, x, w, compiler_options=options)
                n = 3 if "fori_loop" in piece else 1
                out.append((f"conv 5x5 {c}->{o} at {h}x{h}: {piece}", way, t, n * flops / t))
    return out


def pool_rows(batch: int) -> list[tuple[str, str, float, float]]:
    x = jax.random.normal(jax.random.key(0), (batch, 32, 32, 128))

    def train(f, x):
        y, vjp = jax.vjp(f, x)
        return vjp(y)
    ways = {"max pool 3x3/2 of 32x32x128: forward + gradient": (
                ("native (select_and_scatter)", partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2),
                                                        padding="SAME")),
                ("strided slices", lambda x: max_pool_slices(x, 3, 2))),
            "avg pool 3x3/2 of 32x32x128: forward + gradient": (
                ("native", partial(nn.avg_pool, window_shape=(3, 3), strides=(2, 2), padding="SAME",
                                   count_include_pad=False)),)}
    return [(piece, way, seconds(partial(train, f), x), float("nan")) for piece, options in ways.items()
            for way, f in options]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("results/bench/conv_profile.md"))
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from timing import matmul_peak
    peak = matmul_peak()
    rows = conv_rows(args.batch) + pool_rows(args.batch)
    m = machine()
    lines = ["# Where a CNN step's time goes: each piece alone, native and alternatives", "",
             f"Machine: {m['cpu']} ({m['cpu_count']} CPUs), platform {m['platform']}, jax {m['jax']}.",
             f"Commit: {git_commit()}.", f"Command: `python scripts/profile_conv.py {' '.join(sys.argv[1:])}`.",
             f"Batch {args.batch}; float32 matmul peak measured in the same run: {peak / 1e9:.0f} GFLOP/s. "
             "Median of 5 calls after one that compiles.", "",
             "| piece | way | ms | GFLOP/s | % of matmul peak |", "|---|---|---|---|---|"]
    for piece, way, t, rate in rows:
        perf = "| |" if np.isnan(rate) else f"| {rate / 1e9:.0f} | {100 * rate / peak:.0f}% |"
        lines.append(f"| {piece} | {way} | {t * 1e3:.1f} {perf}")
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
