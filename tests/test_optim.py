"""Optimizers: schedules as configured, and modules and SG models on their own settings."""

import jax.numpy as jnp
import numpy as np

from conftest import make_cfg
from sgrad.run.build import build_train_optimizer, learning_rate


def test_piecewise_schedule_divides_at_boundaries():
    cfg = make_cfg("optim.lr=1.0", "optim.schedule=piecewise", "optim.boundaries=[10,20]", "optim.decay_factor=0.1")
    lr = learning_rate(cfg.optim, 100)
    np.testing.assert_allclose([lr(0), lr(10), lr(15), lr(20), lr(50)], [1.0, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_warmup_then_schedule():
    cfg = make_cfg("optim.lr=2.0", "optim.schedule=constant", "optim.warmup_steps=4")
    lr = learning_rate(cfg.optim, 100)
    np.testing.assert_allclose([lr(0), lr(2), lr(4), lr(40)], [0.0, 1.0, 2.0, 2.0], rtol=1e-6)


def test_modules_and_sg_models_follow_their_own_optimizer():
    cfg = make_cfg("optim.name=sgd", "optim.momentum=0", "optim.lr=0.1",
                   "sg.optim.name=sgd", "sg.optim.momentum=0", "sg.optim.lr=0.01")
    tx = build_train_optimizer(cfg, 10)
    w = {"w": jnp.ones(3)}
    g = {"w": jnp.ones(3)}
    up_module, _ = tx.modules.update(g, tx.modules.init(w), w)
    up_sg, _ = tx.sg.update(g, tx.sg.init(w), w)
    np.testing.assert_allclose(up_module["w"], -0.1, rtol=1e-6)
    np.testing.assert_allclose(up_sg["w"], -0.01, rtol=1e-6)
