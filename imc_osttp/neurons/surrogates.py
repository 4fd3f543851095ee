"""Surrogate derivatives ψ(v) of the spike Θ(v) (SPEC §1), for both engines, and the spike for autograd.

A surrogate is ψ(v) = post(vector(pre(v))): `pre` and `post` are elementwise arithmetic (the fused engine
computes `pre` inside its forward kernel and `post` in a kernel of its own; torch computes both on
tensors), `vector` an optional vectorised torch function, in place, between them. numba's scalar tanh
costs ~20 ns, torch's vectorised sigmoid < 1 ns, so tanh's ψ = 1 − tanh²(v) is computed as
sech²(v) = 4σ(−2|v|)(1 − σ(−2|v|)) from −2|v|.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .base import elementwise


class SurrogateParams(NamedTuple):
    scale: float
    one: float = 1.0


@elementwise
def tanh_pre(v, q):  # noqa: ANN001, ANN201
    """−2|v|; its sigmoid σ is what `tanh_post` turns into 1 − tanh²(v)."""
    return -q.scale * abs(v)


@elementwise
def tanh_post(s, q):  # noqa: ANN001, ANN201
    """4σ(1 − σ): with σ = σ(−2|v|) that is sech²(v) = 1 − tanh²(v)."""
    return (q.scale + q.scale) * s * (q.one - s)


@elementwise
def fast_sigmoid_pre(v, q):  # noqa: ANN001, ANN201
    """1 / (100 |v| + 1)², complete in itself (the SHD setting)."""
    w = q.scale * abs(v) + q.one
    return q.one / (w * w)


@dataclass(frozen=True)
class Surrogate:
    name: str
    pre: Callable
    scale: float
    vector: Callable[[Tensor], Tensor] | None = None  # in place
    post: Callable | None = None

    def params(self) -> SurrogateParams:
        return SurrogateParams(self.scale)

    def __call__(self, v: Tensor) -> Tensor:
        """ψ(v) on tensors (a new tensor)."""
        q = self.params()
        P = self.pre(v, q)
        if self.vector is not None:
            self.vector(P)
        return P if self.post is None else self.post(P, q)


SURROGATES: dict[str, Surrogate] = {
    "tanh": Surrogate("tanh", tanh_pre, 2.0, torch.sigmoid_, tanh_post),  # the JSB setting
    "fast_sigmoid": Surrogate("fast_sigmoid", fast_sigmoid_pre, 100.0),  # the SHD setting
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
    """Θ(v) with the named surrogate gradient."""
    return _Spike.apply(v, surrogate)
