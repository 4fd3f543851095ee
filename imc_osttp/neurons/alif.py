"""The adaptive leaky integrate-and-fire neuron (ALIF) of e-prop (Bellec et al. 2020, Nat. Commun. 11:3625,
eqs. 20-23, the neurons of its LSNNs): the SNU's leaky membrane and reset, and a threshold that rises with
every spike and decays back to its baseline b with its own factor ρ:

    v^t = cur^t + d · v^{t-1} ⊙ (1 − y^{t-1})   (full reset)   or   cur^t + d · v^{t-1} − y^{t-1} ⊙ b  (soft)
    a^t = ρ · a^{t-1} + y^{t-1}
    y^t = Θ(v^t − (b + β a^t))

e-prop's neurons reset by subtracting the baseline b (the soft reset); b is the trainable threshold.
Two state variables per unit, so the per-unit Jacobian is 2×2: the spike y^{t-1} moves with v^{t-1} (ψ)
and with a^{t-1} (−βψ), and feeds the reset (into v) and the adaptation (into a). e-prop's factorised
eligibility keeps the second path and drops the first: J = [[d, 0], [ψ, ρ − βψ]].
"""

from __future__ import annotations

from typing import NamedTuple

from ..layers import LayerSpec
from ..registry import register_neuron
from .base import Neuron, elementwise
from .snu import membrane


class ALIFParams(NamedTuple):
    decay: float
    full: bool  # full reset (else soft)
    rho: float  # the adaptation's decay per step
    beta: float  # the threshold's rise per unit of adaptation
    one: float = 1.0


def params(layer: LayerSpec) -> ALIFParams:
    extra = dict(layer.neuron_params)
    return ALIFParams(layer.decay, layer.reset == "full", extra["decay"], extra["beta"])


@elementwise
def step(cur, h, y, b, p):  # noqa: ANN001, ANN201
    v = membrane(cur, h[0], y, b, p)
    a = p.rho * h[1] + y
    return (v, a), v - (b + p.beta * a)


@elementwise
def jacobian(h, y, psi, b, hd, p, exact):  # noqa: ANN001, ANN201
    """Rows v^t, a^t; columns v^{t-1}, a^{t-1}. The membrane's own part (spike held) is A; u = dv^t/dy^{t-1}
    (reset, recurrent self-weight), through y^{t-1} = Θ(v − b − βa): ψ along v, −βψ along a, −ψ along b."""
    zero = p.one - p.one
    if not exact:
        return ((p.decay, zero), (psi, p.rho - p.beta * psi)), ((zero if p.full else -y), -psi)
    if p.full:
        A = p.decay * (p.one - y)
        u = -(p.decay * h[0])
        explicit = zero
    else:
        A = p.decay
        u = -b
        explicit = -y
    if hd is not None:
        u = u + hd
    up = u * psi
    return ((A + up, -(p.beta * up)), (psi, p.rho - p.beta * psi)), (explicit - up, -psi)


@elementwise
def spike_grad(p):  # noqa: ANN001, ANN201
    return (p.one, -p.beta)


@elementwise
def current_grad(p):  # noqa: ANN001, ANN201
    return (p.one, p.one - p.one)  # the current drives v, not a


ALIF = Neuron("alif", ("v", "a"), params, step, jacobian, spike_grad, current_grad)

register_neuron(ALIF)
