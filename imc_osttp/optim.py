"""The one optimisation path every rule shares: a torch optimizer and step decay."""

from __future__ import annotations

import torch

from .config import OptimConfig


def make_optimizer(params: dict[str, torch.nn.Parameter], cfg: OptimConfig
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """SGD or Adam with one group per named parameter at lr × lr_scale[name], and optional
    ×decay_factor every decay_every epochs (applied to every group)."""
    scales = {name: cfg.lr_scale.get(name, 1.0) for name in params}
    groups = [{"params": [p], "lr": cfg.lr * scales[name], "name": name, "lr_scale": scales[name]}
              for name, p in params.items()]
    if cfg.name == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(groups, lr=cfg.lr)
    else:
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    sched = None
    if cfg.decay_every:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.decay_every, gamma=cfg.decay_factor)
    return opt, sched


def group_lrs(opt: torch.optim.Optimizer) -> dict[str, float]:
    """The current (scheduled) learning rate of each named parameter."""
    return {group["name"]: group["lr"] for group in opt.param_groups}


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set the base learning rate: every group at lr × its lr_scale."""
    for group in opt.param_groups:
        group["lr"] = lr * group["lr_scale"]


def base_lr(opt: torch.optim.Optimizer) -> float:
    """The scheduled lr before per-parameter scaling: what a run logs as `lr`."""
    group = opt.param_groups[0]
    return group["lr"] / group["lr_scale"]


def clip_coefficient(grads: list[torch.Tensor], max_norm: float | None) -> float:
    """torch's clip_grad_norm_ factor for the global norm of `grads` (1 when max_norm is None)."""
    if max_norm is None:
        return 1.0
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    return min(1.0, max_norm / (norm + 1e-6))
