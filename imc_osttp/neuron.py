"""The spiking neural unit (SNU), SPEC §1: membrane update, spike, surrogate derivative.

The same step serves BPTT (through `spike`, whose backward is the surrogate)
and the online rules (which read the surrogate `psi` explicitly), so both
see exactly the same forward dynamics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def surrogate_tanh(v: Tensor) -> Tensor:
    """psi(v) = 1 - tanh(v)^2 (the JSB setting)."""
    return 1.0 - torch.tanh(v) ** 2


def surrogate_fast_sigmoid(v: Tensor) -> Tensor:
    """psi(v) = 1 / (100 |v| + 1)^2 (the SHD setting)."""
    return 1.0 / (100.0 * v.abs() + 1.0) ** 2


SURROGATES: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": surrogate_tanh,
    "fast_sigmoid": surrogate_fast_sigmoid,
}


class _Spike(torch.autograd.Function):
    """Heaviside forward, surrogate derivative backward."""

    @staticmethod
    def forward(ctx, v: Tensor, name: str) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(v)
        ctx.name = name
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (v,) = ctx.saved_tensors
        return grad * SURROGATES[ctx.name](v), None


def spike(v: Tensor, surrogate: str) -> Tensor:
    """Theta(v) with the named surrogate gradient."""
    return _Spike.apply(v, surrogate)


def membrane(current: Tensor, s_prev: Tensor, y_prev: Tensor, b: Tensor, decay: float, reset: str) -> Tensor:
    """s^t from the synaptic current x W + y H and the previous state (full or soft reset)."""
    if reset == "full":
        return current + decay * s_prev * (1.0 - y_prev)
    return current + decay * s_prev - y_prev * b


def jacobian_diag(s_prev: Tensor, y_prev: Tensor, psi_prev: Tensor, b: Tensor, decay: float, reset: str,
                  h_diag: Tensor | None, exact: bool) -> tuple[Tensor, Tensor]:
    """(D^t, c^t): the within-neuron Jacobian ds^t/ds^{t-1} and the threshold trace's driving term.

    The threshold trace obeys eps_b^t = D^t eps_b^{t-1} + c^t (SPEC §2). With
    `exact=False` (factorised traces) the reset and threshold paths are
    detached and D is the constant leak. A recurrent layer keeps only the
    diagonal of H (the off-diagonal terms would cost O(n^3) per step).
    """
    if not exact:
        c = -y_prev if reset == "soft" else torch.zeros_like(y_prev)
        return torch.full_like(s_prev, decay), c
    if reset == "full":
        D = decay * (1.0 - y_prev) - decay * s_prev * psi_prev
        c = decay * s_prev * psi_prev
    else:
        D = decay - b * psi_prev
        c = b * psi_prev - y_prev
    if h_diag is not None:
        D = D + h_diag * psi_prev
        c = c - h_diag * psi_prev
    return D, c
