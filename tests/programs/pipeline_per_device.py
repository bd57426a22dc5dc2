"""parallel=pipeline with modules_per_device=2 on 2 CPU devices (4 modules) equals the sequential schedule of the
same 4 modules: a device's second module reads its first module's output of the tick before, as a device would."""

import jax
import numpy as np

from conftest import make_cfg, max_diff, program_setup
from sgrad.devices.layout import build_pipeline, to_train_state
from sgrad.devices.pipeline import make_pipeline_runner
from sgrad.devices.sequential import run_sequential

assert jax.device_count() == 2
rng = np.random.default_rng(0)
B, K = 16, 4
sgd = ["optim.name=sgd", "optim.lr=0.01", "sg.optim.name=sgd", "sg.optim.lr=0.01"]
# cDNI with synthetic inputs sends SG targets back (inside a device and across) and reads the input on every
# device; DGL sends only forward.
for mode in ("cdni_full", "dgl"):
    cfg = make_cfg(f"model.layers={K}", "model.width=16", "sg.hidden_layers=1", "sg.width=32", "si.width=32",
                   f"mode={mode}", *sgd)
    net, tx, fresh, xs, ys, pre, _ = program_setup(cfg, (6, 6, 1), B, rng)
    T = 3 * K + 4
    idx = rng.integers(0, 128, (T, B)).astype(np.int32)
    pipe, state = build_pipeline(net, tx, fresh(), (6, 6, 1), B, per_device=2)
    assert pipe.k == K and pipe.devices == 2
    run = make_pipeline_runner(pipe, pre, jax.devices())
    state, metrics = run(state, xs, ys, idx, np.int32(T))
    got, ref, start = to_train_state(pipe, state), run_sequential(pipe, fresh(), xs, ys, idx, pre), fresh()
    assert int(got.step) == int(ref.step) == T
    modules = lambda p: list(p["modules"]) + list(p["interface"])
    assert all(max_diff(a, b) > 0 for a, b in zip(modules(got.params), modules(start.params)))
    for part in ("params", "stats", "opt_state"):
        d = max_diff(getattr(got, part), getattr(ref, part))
        assert d < 1e-5, (mode, part, d)
    assert np.isfinite(float(metrics["loss"]))
    print(mode, "ok", sorted(k for k in metrics if k.startswith(("sg/loss/", "aux/"))))
