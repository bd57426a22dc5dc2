"""sg_share on K CPU devices (argv[1]): device i+1 regresses a copy of M_i on part of each batch.

1. Without batch norm in M the regression gradient is a sum over rows, so sharing it changes nothing: the shared
   pipeline equals the unshared one (which tests/programs/pipeline_equality.py checks against the plain-Python
   schedule and the single-device step).
2. With Adam and M's batch norm (each device normalises over its own rows) the copies still step exactly as M:
   after every tick device i+1's copy of M_i and its optimizer state equal device i's, bit for bit.
"""

import sys

import jax
import numpy as np

from conftest import make_cfg, max_diff, program_setup
from sgrad.devices.layout import build_pipeline, row_of, to_train_state
from sgrad.devices.pipeline import _lane_shapes, make_pipeline_runner

K = int(sys.argv[1])
assert jax.device_count() == K
rng = np.random.default_rng(0)
B, SHAPE = 16, (6, 6, 1)


def setup(*overrides):
    cfg = make_cfg(f"model.layers={K}", "model.width=16", "sg.hidden_layers=1", "sg.width=32", *overrides)
    return program_setup(cfg, SHAPE, B, rng)[:6]


def run(net, tx, state, xs, ys, pre, idx, share):
    pipe, pstate = build_pipeline(net, tx, state, SHAPE, B, sg_share=share)
    pstate, metrics = make_pipeline_runner(pipe, pre, jax.devices())(pstate, xs, ys, idx, np.int32(len(idx)))
    return pipe, pstate, metrics


def assert_copies_equal(pipe, pstate):
    slots = tuple(np.asarray(slot) for slot in pstate.stage_KxS)
    for i in range(1, pipe.k):
        below, here = pipe.tree(i - 1, row_of(slots, i - 1)), pipe.tree(i, row_of(slots, i))
        for a, b in ((below["interface"], here["peer"]), (below["interface_opt"], here["peer_opt"])):
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


T = 3 * K + 4
idx = rng.integers(0, 128, (T, B)).astype(np.int32)

sgd = ["optim.name=sgd", "optim.lr=0.01", "sg.optim.name=sgd", "sg.optim.lr=0.01"]
for mode in ("dni", "cdni"):
    net, tx, fresh, xs, ys, pre = setup(f"mode={mode}", "sg.batch_norm=false", *sgd)
    plain_pipe, plain, _ = run(net, tx, fresh(), xs, ys, pre, idx, 0.0)
    pipe, shared, metrics = run(net, tx, fresh(), xs, ys, pre, idx, 0.25)
    assert pipe.shared_rows == 4
    got, want, start = to_train_state(pipe, shared), to_train_state(plain_pipe, plain), fresh()
    assert max_diff(got.params["interface"], start.params["interface"]) > 1e-3, "the SG models must have learned"
    for part in ("params", "stats", "opt_state"):
        d = max_diff(getattr(got, part), getattr(want, part))
        assert d < 1e-5, (mode, part, d)
    assert_copies_equal(pipe, shared)
    assert np.isfinite(float(metrics["sg/loss/1"]))
    print(mode, "shared = unshared")

if K == 3:
    # Interfaces of widths 16 and 24: M_0 and M_1 differ in shape, so no one piece of code can step every device's
    # copies, and each device's branch steps its own (apply_shared): shared = unshared there too.
    cfg = make_cfg("model=custom", "model._target_=residual_model.widening_modules", "sg.hidden_layers=0",
                   "mode=dni", "sg.batch_norm=false", *sgd)
    net, tx, fresh, xs, ys, pre = program_setup(cfg, SHAPE, B, rng)[:6]
    plain_pipe, plain = build_pipeline(net, tx, fresh(), SHAPE, B)
    pipe, shared = build_pipeline(net, tx, fresh(), SHAPE, B, sg_share=0.25)
    lanes = [lane for lanes in _lane_shapes(pipe) for lane in lanes if lane is not None]
    assert any(lane != lanes[0] for lane in lanes), "the SG models must differ in shape"
    plain, _ = make_pipeline_runner(plain_pipe, pre, jax.devices())(plain, xs, ys, idx, np.int32(len(idx)))
    shared, _ = make_pipeline_runner(pipe, pre, jax.devices())(shared, xs, ys, idx, np.int32(len(idx)))
    got, want = to_train_state(pipe, shared), to_train_state(plain_pipe, plain)
    assert max_diff(got.params["interface"], fresh().params["interface"]) > 1e-3
    for part in ("params", "opt_state"):
        d = max_diff(getattr(got, part), getattr(want, part))
        assert d < 1e-5, ("widths", part, d)
    print("dni widths 16, 24 shared = unshared")

net, tx, fresh, xs, ys, pre = setup("mode=cdni")  # Adam, batch norm in M
pipe, shared, _ = run(net, tx, fresh(), xs, ys, pre, idx, 0.5)
assert max_diff(to_train_state(pipe, shared).params["interface"], fresh().params["interface"]) > 1e-3
assert_copies_equal(pipe, shared)
print("cdni batch norm copies equal")
