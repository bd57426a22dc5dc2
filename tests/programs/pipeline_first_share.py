"""first_share on K CPU devices (argv[1]): device 1 trains a copy of module 0 and its auxiliary classifier on the
last rows of each minibatch, device 0 on the first rows.

1. Without batch norm a module's gradient is a sum over rows, so sharing module 0 changes nothing: the shared
   pipeline equals the unshared one (which tests/programs/pipeline_dgl_ddg.py checks against the plain-Python
   schedule and the single-device step).
2. With Adam and batch norm (each device normalises over its own rows) the copy still steps exactly as module 0:
   after every tick device 1's copy and its optimizer state equal device 0's module 0 and head, bit for bit.
"""

import sys

import jax
import numpy as np

from conftest import make_cfg, max_diff, program_setup
from sgrad.devices.layout import build_pipeline, row_of, to_train_state
from sgrad.devices.pipeline import make_pipeline_runner

K = int(sys.argv[1])
assert jax.device_count() == K
rng = np.random.default_rng(0)
B, SHAPE = 16, (6, 6, 1)


def setup(*overrides):
    cfg = make_cfg("mode=dgl", f"model.layers={2 * K}", "model.dni_every=2", "model.width=16", *overrides)
    return program_setup(cfg, SHAPE, B, rng)[:6]


def run(net, tx, state, xs, ys, pre, idx, share):
    pipe, pstate = build_pipeline(net, tx, state, SHAPE, B, first_share=share)
    pstate, metrics = make_pipeline_runner(pipe, pre, jax.devices())(pstate, xs, ys, idx, np.int32(len(idx)))
    return pipe, pstate, metrics


def assert_copy_equal(pipe, pstate):
    slots = tuple(np.asarray(slot) for slot in pstate.stage_KxS)
    first, copy = pipe.tree(0, row_of(slots, 0)), pipe.tree(1, row_of(slots, 1))
    for part, key in (("module", "module"), ("interface", "interface")):
        for suffix in ("", "_opt"):
            for x, y in zip(jax.tree.leaves(first[key + suffix]), jax.tree.leaves(copy["first" + suffix][part]),
                            strict=True):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


T = 3 * K + 4
idx = rng.integers(0, 128, (T, B)).astype(np.int32)

sgd = ["optim.name=sgd", "optim.lr=0.05", "sg.optim.name=sgd", "sg.optim.lr=0.05"]
net, tx, fresh, xs, ys, pre = setup("model.batch_norm=false", "aux.batch_norm=false", *sgd)
assert len(net.modules[0].layers) == 2  # module 0 has a hidden layer, whose input cotangent stays on the device
plain_pipe, plain, _ = run(net, tx, fresh(), xs, ys, pre, idx, 0.0)
pipe, shared, metrics = run(net, tx, fresh(), xs, ys, pre, idx, 0.25)
assert pipe.first_rows == 4
got, want, start = to_train_state(pipe, shared), to_train_state(plain_pipe, plain), fresh()
assert max_diff(got.params["modules"][0], start.params["modules"][0]) > 1e-3, "module 0 must have learned"
for part in ("params", "opt_state"):  # (no batch statistics without batch norm)
    d = max_diff(getattr(got, part), getattr(want, part))
    assert d < 1e-5, (part, d)
assert_copy_equal(pipe, shared)
assert np.isfinite(float(metrics["aux/loss/1"]))
print("dgl shared = unshared")

net, tx, fresh, xs, ys, pre = setup()  # Adam, batch norm in the modules and the heads
pipe, shared, _ = run(net, tx, fresh(), xs, ys, pre, idx, 0.5)
assert max_diff(to_train_state(pipe, shared).params["modules"][0], fresh().params["modules"][0]) > 1e-3
assert_copy_equal(pipe, shared)
print("dgl batch norm copy equal")
