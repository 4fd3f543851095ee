"""The spiking neural unit (SNU, SPEC §1): a leaky membrane with full or soft reset, one state variable.

    full reset:  s^t = cur^t + d · s^{t-1} ⊙ (1 − y^{t-1})
    soft reset:  s^t = cur^t + d · s^{t-1} − y^{t-1} ⊙ b
    y^t = Θ(s^t − b)
"""

from __future__ import annotations

from typing import NamedTuple

from ..layers import LayerSpec
from ..registry import register_neuron
from .base import Neuron, elementwise


class SNUParams(NamedTuple):
    decay: float
    full: bool  # full reset (else soft)
    one: float = 1.0


def params(layer: LayerSpec) -> SNUParams:
    return SNUParams(layer.decay, layer.reset == "full")


@elementwise
def membrane(cur, s, y, b, p):  # noqa: ANN001, ANN201
    """The leaky membrane with its reset: s^t from the current and s^{t-1}, y^{t-1} (p: decay, full, one)."""
    if p.full:
        return cur + p.decay * s * (p.one - y)
    return cur + p.decay * s - y * b


@elementwise
def step(cur, h, y, b, p):  # noqa: ANN001, ANN201
    s = membrane(cur, h[0], y, b, p)
    return (s,), s - b


@elementwise
def jacobian(h, y, psi, b, hd, p, exact):  # noqa: ANN001, ANN201
    """D^t = ds^t/ds^{t-1} and the threshold trace's drive c^t (SPEC §2): full reset
    d(1 − y) − d s ψ and d s ψ, soft reset d − b ψ and b ψ − y, both + hd ψ and − hd ψ; factorised
    (reset detached) d and the explicit −y of the soft reset."""
    s = h[0]
    if not exact:
        return ((p.decay,),), ((y - y) if p.full else -y,)
    if p.full:
        ds = p.decay * s
        D = p.decay * (p.one - y) - ds * psi
        c = ds * psi
    else:
        D = p.decay - b * psi
        c = b * psi - y
    if hd is not None:
        D = D + hd * psi
        c = c - hd * psi
    return ((D,),), (c,)


@elementwise
def spike_grad(p):  # noqa: ANN001, ANN201
    return (p.one,)


SNU = Neuron("snu", ("s",), params, step, jacobian, spike_grad, spike_grad)  # d arg/ds = ds/dcur = 1

register_neuron(SNU)
