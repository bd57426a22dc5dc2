"""mode=fr, Features Replay (Huo, Gu and Huang, NeurIPS 2018, arXiv:1807.04511): module k of K keeps the inputs it
received over the last K-k steps and, instead of stashing weights as DDG does, recomputes its forward pass on the
input from K-k steps ago with its current weights and back-propagates the delayed gradient from above through it.
The top module steps along its true gradient at once; the forward pass is locked, the backward is not."""

from __future__ import annotations

from sgrad.modes.ddg import delayed_rule

RULE = delayed_rule("fr", "the true gradient from above, K-i steps late, through its forward replayed at the current "
                    "weights (Features Replay)", keep_weights=False)
