"""The one optimisation path every rule shares: a torch optimizer and step decay."""

from __future__ import annotations

import torch

from .config import OptimConfig


def make_optimizer(params: list[torch.nn.Parameter], cfg: OptimConfig
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """SGD or Adam over `params`, with optional ×decay_factor every decay_every epochs."""
    if cfg.name == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=cfg.lr)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    sched = None
    if cfg.decay_every:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.decay_every, gamma=cfg.decay_factor)
    return opt, sched


def clip_coefficient(grads: list[torch.Tensor], max_norm: float | None) -> float:
    """torch's clip_grad_norm_ factor for the global norm of `grads` (1 when max_norm is None)."""
    if max_norm is None:
        return 1.0
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    return min(1.0, max_norm / (norm + 1e-6))
