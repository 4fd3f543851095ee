"""The online rules: OSTL, OSTL-rnd, DRTP and OSTTP share one forward-in-time engine.

They differ only in the hidden learning signal L_l^t of each layer l (SPEC §3, §6) and
in the trace they multiply it with (exact, factorised, or none for DRTP); every layer
keeps its own traces. The engine walks the sequence in chunks of K steps: the
network advances K steps, then the signals of the chunk are computed in batched
products and every layer's traces advance through it. Every quantity is causal, and memory is bounded by the
chunk, not by T. With per-step updates K = 1 and the update is applied after
every step, so step t+1 already runs on the changed weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .. import registry
from ..config import RuleConfig
from ..data.batching import Batch
from ..network import Chunk, SNUNet
from ..registry import register_rule
from .traces import make_traces

# steps per chunk when updates are applied per sequence: SHD's 100 steps (and FSDD's 50) fit one
# chunk, so their exact traces are never carried (ExactTraces); memory still grows with K, not T
CHUNK_STEPS = 128

# every hidden layer's g_l = L_l^t ⊙ ψ_l^t from (net, chunk, readout error p - y*, target y*), the error
# and target masked to valid steps; each [B, K, n_l]
Signal = Callable[[SNUNet, Chunk, Tensor, Tensor], list[Tensor]]


def _batched(fn: Callable[[Tensor], Tensor], z: Tensor) -> Tensor:
    B, K, _ = z.shape
    return fn(z.reshape(B * K, -1)).reshape(B, K, -1)


def backpropagated(net: SNUNet, chunk: Chunk, err: Tensor, target: Tensor) -> list[Tensor]:
    """OSTL (eq. 7): L_L = err W{L+1}ᵀ, then L_l = (L_{l+1} ⊙ ψ_{l+1}) W_{l+1}ᵀ, within the step.

    The signal crosses layers only at the same step: the paths from layer l through the
    future of the layers above it (their s^{t-1}, y^{t-1}) are dropped, so layer l gets the
    exact gradient of a network whose upper layers' temporal state is detached (exact for
    one layer, an approximation beyond). It needs every W above and waits for the readout."""
    be = net.backend
    signal = _batched(lambda e: be.mvm_t(net.out_w, e), err)
    gs: list[Tensor] = []
    for layer, lc in zip(reversed(net.layers), reversed(chunk.layers), strict=True):
        g = signal * lc.psi
        gs.insert(0, g)
        if layer.index > 1:
            signal = _batched(lambda d, name=layer.W: be.mvm_t(name, d), g)
    return gs


def projected(source: str) -> Signal:
    """L_l = v B_l with v the readout error (OSTL-rnd, eq. 10) or the target (DRTP, OSTTP, eq. 11).
    One product with the stacked [B_1 … B_L] gives every layer's signal: no layer waits for another."""

    def signal(net: SNUNet, chunk: Chunk, err: Tensor, target: Tensor) -> list[Tensor]:
        v = err if source == "error" else target
        per_layer = net.split(_batched(net.backend.feedback, v))
        return [L * lc.psi for L, lc in zip(per_layer, chunk.layers, strict=True)]

    return signal


# the built-in online rules, registered as a plugin's would be (imc_osttp.registry)
register_rule("ostl", backpropagated)
register_rule("ostl_rnd", projected("error"))
register_rule("drtp", projected("target"), traces="none")  # no memory of the past: its eligibility is ψ^t x^t
register_rule("osttp", projected("target"))


def trace_kind(rule: RuleConfig) -> str:
    """The eligibility trace the rule multiplies: its own kind (DRTP: none), else `rule.traces`."""
    return registry.rule(rule.name).traces or rule.traces


@torch.no_grad()
def online_update(rule: RuleConfig, net: SNUNet, batch: Batch):
    from . import BatchStats

    be = net.backend
    acc = be.accumulator()
    signal = registry.rule(rule.name).signal
    kind = trace_kind(rule)
    traces = [make_traces(kind, net, layer, batch.size, batch.x, acc) for layer in net.layers]
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
        err = net.readout.error(chunk.logits, y_star) * mask
        gs = signal(net, chunk, err, y_star * mask)
        carry = t0 + K < batch.x.shape[1]
        for tr, lc, lb, g in zip(traces, chunk.layers, before.layers, gs, strict=True):
            tr.advance(lc, lb, g, carry=carry)
        if net.out_w in acc:
            acc.add_outer(net.out_w, chunk.readout.trace.flatten(0, 1), err.flatten(0, 1))
        if net.out_c in acc:
            acc.add(net.out_c, (err * chunk.readout.bias_trace).sum((0, 1)))
        loss_sum += (net.readout.loss(chunk.logits, y_star) * mask[..., 0]).sum()
        spikes += sum((lc.y.sum(-1) * mask[..., 0]).sum() for lc in chunk.layers)  # no [B, K, Σn] temporary
        if per_step:
            be.apply(acc.take(scale))
    stats = BatchStats(float(loss_sum), int(batch.mask.sum()), float(spikes))
    return ({} if per_step else acc.take(scale)), stats
