"""The online rules: OSTL, OSTL-rnd, DRTP and OSTTP share one forward-in-time engine.

They differ only in the hidden learning signal L^t (SPEC §3) and in the
trace they multiply it with (exact, factorised, or none for DRTP). The
engine walks the sequence in chunks of K steps: the network advances K steps,
then the signals of the chunk are computed in batched products and the traces
advance through it. Every quantity is causal, and memory is bounded by the
chunk, not by T. With per-step updates K = 1 and the update is applied after
every step, so step t+1 already runs on the changed weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..config import RuleConfig
from ..data.batching import Batch
from ..network import SNUNet, shift_in
from .traces import make_traces

# steps per chunk when updates are applied per sequence: SHD's 100 steps (and FSDD's 50) fit one
# chunk, so their exact traces are never carried (ExactTraces); memory still grows with K, not T
CHUNK_STEPS = 128

# L^t from (net, readout error p - y*, target y*), all masked to valid steps, shaped [B, K, .]
Signal = Callable[[SNUNet, Tensor, Tensor], Tensor]


def _batched(fn: Callable[[Tensor], Tensor], z: Tensor) -> Tensor:
    B, K, _ = z.shape
    return fn(z.reshape(B * K, -1)).reshape(B, K, -1)


SIGNALS: dict[str, Signal] = {
    "ostl": lambda net, err, target: _batched(lambda e: net.backend.mvm_t("W2", e), err),
    "ostl_rnd": lambda net, err, target: _batched(net.backend.feedback, err),
    "drtp": lambda net, err, target: _batched(net.backend.feedback, target),
    "osttp": lambda net, err, target: _batched(net.backend.feedback, target),
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
    K = 1 if per_step else CHUNK_STEPS
    scale = 1.0 / batch.size
    loss_sum = batch.x.new_zeros(())
    spikes = batch.x.new_zeros(())
    for t0 in range(0, batch.x.shape[1], K):
        x, y_star = batch.x[:, t0 : t0 + K], batch.y[:, t0 : t0 + K]
        mask = batch.mask[:, t0 : t0 + K, None]
        before = state
        chunk, state = net.run(x, before)
        D, c = net.jacobian(chunk, before, exact=kind == "exact")
        err = net.readout.error(chunk.logits, y_star) * mask
        g = signal(net, err, y_star * mask) * chunk.psi  # L^t ⊙ psi^t
        traces.advance(D, c, x, shift_in(before.y, chunk.y), g, carry=t0 + K < batch.x.shape[1])
        if "W2" in acc:
            acc.add_outer("W2", chunk.readout.trace.flatten(0, 1), err.flatten(0, 1))
        if "c2" in acc:
            acc.add("c2", (err * chunk.readout.bias_trace).sum((0, 1)))
        loss_sum += (net.readout.loss(chunk.logits, y_star) * mask[..., 0]).sum()
        spikes += (chunk.y * mask).sum()
        if per_step:
            be.apply(acc.take(scale))
    stats = BatchStats(float(loss_sum), int(batch.mask.sum()), float(spikes))
    return ({} if per_step else acc.take(scale)), stats
