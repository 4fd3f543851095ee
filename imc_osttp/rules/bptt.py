"""BPTT: torch autograd through the unrolled SNU with the surrogate derivative."""

from __future__ import annotations

import torch

from ..data.batching import Batch
from ..network import SNUNet


def bptt_update(net: SNUNet, batch: Batch):
    """Exact gradient of E = Σ_b Σ_t E_b^t / B with respect to the trainable parameters."""
    from . import BatchStats

    acc = net.backend.accumulator()
    params = net.backend.parameters()
    names = list(acc.sums)
    with torch.enable_grad():
        logits, spikes = net.forward(batch.x, differentiable=True)
        loss = (net.readout.loss(logits, batch.y) * batch.mask).sum()
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
    for name, grad in zip(names, grads, strict=True):
        if grad is not None:
            acc.add(name, grad)
    stats = BatchStats(float(loss.detach()), int(batch.mask.sum()),
                       float((spikes.detach().sum(-1) * batch.mask).sum()))
    return acc.take(1.0 / batch.size), stats
