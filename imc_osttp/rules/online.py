"""The online rules: OSTL, OSTL-rnd, DRTP and OSTTP share one forward-in-time engine.

They differ only in the hidden learning signal L^t (SPEC §3) and in the
trace they multiply it with (exact, factorised, or none for DRTP). At every
step the engine advances the network, the traces and the readout, and adds
L^t ⊙ e^t to the backend's accumulator; nothing is stored across time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..config import RuleConfig
from ..data.batching import Batch
from ..network import SNUNet
from .traces import make_traces

# L^t from (net, readout error p - y*, target y*), all masked to valid steps
Signal = Callable[[SNUNet, Tensor, Tensor], Tensor]
SIGNALS: dict[str, Signal] = {
    "ostl": lambda net, err, target: net.backend.mvm_t("W2", err),
    "ostl_rnd": lambda net, err, target: net.backend.feedback(err),
    "drtp": lambda net, err, target: net.backend.feedback(target),
    "osttp": lambda net, err, target: net.backend.feedback(target),
}


def trace_kind(rule: RuleConfig) -> str:
    """DRTP has no memory of the past: its eligibility is psi^t x^t."""
    return "none" if rule.name == "drtp" else rule.traces


@torch.no_grad()
def online_update(rule: RuleConfig, net: SNUNet, batch: Batch):
    from . import BatchStats

    be = net.backend
    acc = be.accumulator()
    signal = SIGNALS[rule.name]
    kind = trace_kind(rule)
    traces = make_traces(kind, net, batch.size, batch.x, acc)
    state = net.init_state(batch.size, batch.x)
    per_step = rule.update_timing == "step"
    scale = 1.0 / batch.size
    loss_sum = batch.x.new_zeros(())
    spikes = batch.x.new_zeros(())
    for t in range(batch.x.shape[1]):
        x, mask = batch.x[:, t], batch.mask[:, t : t + 1]
        D, c = net.jacobian(state, exact=kind == "exact")
        y_prev = state.y
        state, logits = net.step(x, state)
        traces.step(D, c, x, y_prev)
        target = batch.y[:, t] * mask
        err = net.readout.error(logits, batch.y[:, t]) * mask
        g = signal(net, err, target) * state.psi  # L^t ⊙ psi^t
        traces.contribute(g)
        if "W2" in acc:
            acc.add_outer("W2", state.readout.trace, err)
        if "c2" in acc:
            acc.add("c2", (err * state.readout.bias_trace).sum(0))
        loss_sum += (net.readout.loss(logits, batch.y[:, t]) * mask[:, 0]).sum()
        spikes += (state.y * mask).sum()
        if per_step:
            be.apply(acc.take(scale))
    stats = BatchStats(float(loss_sum), int(batch.mask.sum()), float(spikes))
    return ({} if per_step else acc.take(scale)), stats
