"""How well any synthetic gradient model could agree with the true future gradient, at a trained LSTM.

    python scripts/sg_ceiling.py RUN_DIR [RUN_DIR ...] [--streams 64] [--out results/rnn/sg_ceiling/table.md]

`sg/cosine` (sgrad/core/recurrent.py, future_gradient_probe) compares ĝ with the true gradient of the rest of
the episode. How high it can go depends on what the state at a boundary says about that gradient: on Copy the
future inputs are unknown at the boundary, so even the best predictor of the gradient from the state falls short
of 1. This script separates that ceiling from how well the run's own M learned, at the core a run reached
(its last checkpoint of `sgrad-train +exp=copy_dni ...`, or any LSTM run on Copy / Repeat Copy):

- it generates fresh probe streams at the run's curriculum level (`--streams` of them, each as the probe
  generates one), and at every boundary the probe counts collects M's input (sgrad.core.recurrent.sg_features:
  the state, and for cDNI the next window's targets) and the true future gradient;
- it fits M's own form, an affine map of those inputs, by least squares to the true gradient on half the
  streams (a ridge of 1e-3 of the features' mean square), and reports its cosine on the other half: the
  ceiling of a linear M at this core, with the true future gradient as its target;
- and, for a model with more capacity, an MLP (one hidden layer of 512, ReLU) trained by Adam on the same
  half to the same target, cosine on the held-out half;
- beside the run's own M on the held-out half (what `sg/cosine` measures, over more boundaries).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from omegaconf import OmegaConf

from sgrad.core.dni import agreement
from sgrad.core.recurrent import future_gradients, sg_features, sg_used, synthetic_gradient, window_label
from sgrad.run.checkpoint import Checkpoints, find_checkpoint_dir
from sgrad.run.provenance import git_commit, machine
from sgrad.run.sequence import SequenceTask


def boundaries(task: SequenceTask, state, streams: int, first: int):
    """(features [N, F], M's ĝ [N, S], true future gradient [N, S]) at every boundary the probe counts, over
    `streams` fresh streams (chunks from step `first` on, a probe's length each), rows where the next window
    starts a new episode left out (ĝ is 0 there by construction)."""
    net, params, vocab = task.net, state.params, task.net.core.outputs
    windows = task.probe_windows()

    @jax.jit
    def one(s0, x, y, mask, resets):
        states, g_true = future_gradients(net, params["core"], s0, x, y, mask, resets)
        counted = slice(1, windows // 2 + 1)
        labels = jax.vmap(lambda yk, mk: window_label(net, yk, mk, vocab))(y[counted], mask[counted])
        feats = jax.vmap(lambda s, lab: sg_features(net, s, lab))(states[counted], labels)
        g_hat = jax.vmap(lambda s, lab: synthetic_gradient(net, params["sg"], s, lab))(states[counted], labels)
        keep = jax.vmap(sg_used)(resets[counted])[..., 0]  # rows whose ĝ is used
        return feats, g_hat, g_true[counted], keep

    out = [[], [], []]
    for k in range(streams):
        p = task.stream.chunk(first + k * windows, windows)
        feats, g_hat, g_true, keep = jax.device_get(one(state.carry, p.x, p.y, p.mask, p.resets))
        rows = keep.reshape(-1) > 0
        for acc, a in zip(out, (feats, g_hat, g_true)):
            acc.append(a.reshape(-1, a.shape[-1])[rows])
    return tuple(np.concatenate(acc) for acc in out)


def cosine(estimate, truth) -> float:
    return float(agreement(jnp.asarray(estimate), jnp.asarray(truth))[0])


def least_squares(f_train, g_train, f_test, ridge: float = 1e-3):
    """An affine map fitted by ridge regression; its predictions on f_test."""
    a = np.concatenate([f_train, np.ones((len(f_train), 1))], axis=1).astype(np.float64)
    b = np.concatenate([f_test, np.ones((len(f_test), 1))], axis=1).astype(np.float64)
    gram = a.T @ a
    gram += ridge * np.trace(gram) / len(gram) * np.eye(len(gram))
    w = np.linalg.solve(gram, a.T @ g_train.astype(np.float64))
    return b @ w


def mlp_fit(f_train, g_train, f_test, steps: int = 3000, seed: int = 0):
    """One hidden layer of 512 (ReLU), Adam 1e-3 on minibatches of 256, squared error: its predictions on
    f_test."""
    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    x, t, xt = (f_train - mean) / std, g_train, (f_test - mean) / std
    scale = float(np.sqrt((t ** 2).mean())) or 1.0
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {"w1": jax.random.normal(k1, (x.shape[1], 512)) / np.sqrt(x.shape[1]), "b1": jnp.zeros(512),
              "w2": jax.random.normal(k2, (512, t.shape[1])) * 0.01, "b2": jnp.zeros(t.shape[1])}
    apply = lambda p, a: (jax.nn.relu(a @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]) * scale
    tx = optax.adam(1e-3)

    @jax.jit
    def step(p, opt, xb, tb):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((apply(p, xb) - tb) ** 2))(p)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    opt, rng = tx.init(params), np.random.default_rng(seed)
    for _ in range(steps):
        pick = rng.integers(0, len(x), 256)
        params, opt, _ = step(params, opt, x[pick], t[pick])
    return np.asarray(jax.jit(apply)(params, xt))


def ceiling(run_dir: Path, streams: int, mlp_steps: int = 3000) -> dict:
    cfg = run_config(run_dir)
    task = SequenceTask(cfg)
    checkpoints = Checkpoints(find_checkpoint_dir(run_dir), read_only=True)
    like = task.checkpoint(task.init())
    found = checkpoints.restore_latest(like)
    if found is None:
        sys.exit(f"no checkpoint in {find_checkpoint_dir(run_dir)}")
    step, saved = found
    state = task.restore(saved)
    level = task.stream.level
    feats, g_hat, g_true = boundaries(task, state, streams, first=10 ** 7)  # never a training chunk's start
    row = {"run": str(run_dir), "settings": settings(cfg), "step": int(step), "level": level,
           "boundaries": len(feats), "probe": probe_mean(run_dir), **fit_cosines(feats, g_hat, g_true, mlp_steps)}
    # How fast the target moves: the affine fit at each earlier checkpoint the run kept (its own core and
    # curriculum level), against the truth at the last one (its held-out half).
    test = slice(len(feats) // 2, None)
    row["stale"] = {}
    for earlier in checkpoints.steps()[:-1]:
        old = task.restore(checkpoints.restore(earlier, like))
        f_old, _, g_old = boundaries(task, old, streams // 2, first=10 ** 7 + 1)
        row["stale"][int(step) - earlier] = cosine(least_squares(f_old, g_old, feats[test]), g_true[test])
    return row


def probe_mean(run_dir: Path) -> float:
    """The run's own `sg/cosine` (logged every log.grad_probe_every windows), averaged over its second half."""
    values = [json.loads(line).get("sg/cosine") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    values = [v for v in values if v is not None]
    return float(np.mean(values[len(values) // 2:])) if values else float("nan")


def fit_cosines(feats, g_hat, g_true, mlp_steps: int = 3000) -> dict:
    """Cosines with the truth of: the run's M (`own`, held-out half; `own_in`, the fitting half), the affine least
    squares fit (`linear` held out, `linear_in` in-sample) and the MLP's (held out). The in-sample affine fit is
    the projection of the truth on everything an affine map of these features can output, so no affine M has a
    higher cosine on the fitting half (up to the small ridge)."""
    half = len(feats) // 2
    train, test = slice(0, half), slice(half, None)
    return {"own": cosine(g_hat[test], g_true[test]), "own_in": cosine(g_hat[train], g_true[train]),
            "linear_in": cosine(least_squares(feats[train], g_true[train], feats[train]), g_true[train]),
            "linear": cosine(least_squares(feats[train], g_true[train], feats[test]), g_true[test]),
            "mlp": cosine(mlp_fit(feats[train], g_true[train], feats[test], mlp_steps), g_true[test])}


def run_config(run_dir: Path):
    """The config a run was made with, from the run_config.json sgrad-train leaves in its run dir."""
    path = run_dir / "run_config.json"
    if not path.exists():
        sys.exit(f"{run_dir} is not an sgrad-train run dir: no run_config.json there")
    nested: dict = {}
    for key, value in json.loads(path.read_text()).items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return OmegaConf.create(nested)


# What sets M's target, its learner and the core's pace: the settings a row of the table is told apart by.
SALIENT = ("mode", "trainer.bptt", "optim.lr", "sg.optim.name", "sg.optim.lr", "sg.optim.forget", "sg.hidden_layers",
           "sg.trace", "sg.trace_lambda", "sg.trace_windows", "dataset.start_length")


def settings(cfg) -> str:
    return " ".join(f"{key}={OmegaConf.select(cfg, key)}" for key in SALIENT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run dirs of LSTM runs on copy or repeat_copy")
    ap.add_argument("--streams", type=int, default=64, help="fresh probe streams (half fit, half held out)")
    ap.add_argument("--mlp-steps", type=int, default=3000, help="Adam steps of the MLP's fit")
    ap.add_argument("--out", type=Path, default=Path("results/rnn/sg_ceiling/table.md"))
    args = ap.parse_args()
    rows = []
    for run_dir in args.runs:
        rows.append(ceiling(run_dir, args.streams, args.mlp_steps))
        print(rows[-1], flush=True)
    m = machine()
    lines = ["# How far any SG model could agree with the true future gradient, at the core a run reached", "",
             f"`python scripts/sg_ceiling.py {' '.join(sys.argv[1:])}`; commit {git_commit()}; machine {m['cpu']}.",
             "", "Each row: a run's last checkpoint; fresh probe streams at its curriculum level "
             f"({args.streams}, each as `sg/cosine`'s probe makes one), every boundary the probe counts, "
             "boundaries before a new episode left out. Cosines over the held-out half of the boundaries "
             "(flattened over boundaries and batch, as `sg/cosine`): the run's own M (beside the mean of its own "
             "`sg/cosine` probes over the second half of training); an affine M fitted by "
             "least squares to the true future gradient on the other half (its in-sample cosine beside it); an "
             "MLP (512 ReLU units) fitted by Adam to the same target; the affine fit made at the run's earlier "
             "checkpoints (their core and curriculum level), on the same held-out boundaries: how fast the best "
             "M of one moment goes stale.", "",
             "| run | settings | windows trained | Copy length | boundaries | run's sg/cosine, second half | run's M | affine M fit to the "
             "truth (in-sample) | MLP fit to the truth | affine fit made N windows earlier |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['run']).name} | {r['settings']} | {r['step']} | {r['level']} | {r['boundaries']} "
                     f"| {r['probe']:+.3f} | {r['own']:+.3f} | {r['linear']:+.3f} ({r['linear_in']:+.3f}) | {r['mlp']:+.3f} | "
                     + ", ".join(f"{n}: {c:+.3f}" for n, c in sorted(r["stale"].items())) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
