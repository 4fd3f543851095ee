"""What a neuron model is: one definition that both engines run.

A neuron is a few functions of plain arithmetic over one unit, its state and its parameters:

- `step(cur, h, y, b, p) -> (h', arg)`: the unit's k state variables h at t-1 (a tuple), the input
  current `cur` = x^t W (+ y^{t-1} H), its spike y^{t-1}, its threshold b and the layer's parameters p
  give the state at t and the spike's argument: y^t = Θ(arg), ψ^t = ψ(arg) (SPEC §1).
- `jacobian(h, y, psi, b, hd, p, exact) -> (J, c)`: from the state at t-1 (and its ψ), the per-unit
  Jacobian `J[i][j] = dh'_i/dh_j` of the step at t, through the spike y^{t-1} as well, and c_i = dh'_i/db
  (the threshold's path, SPEC §2). `hd` is the unit's recurrent self-weight H_jj, or None without
  one: the recurrence's diagonal is the one part of y^{t-1} H the per-unit Jacobian can keep (numba
  compiles the None case apart, without its terms).
  `exact=False` gives e-prop's approximation, the factorised traces (Bellec et al. 2020): the spike's
  path into the membrane (reset, recurrence) is dropped; a one-state neuron's Jacobian is then its leak
  `p.decay`, so its trace of W is the filtered input.
- `spike_grad(p) -> r`: d arg/dh, constant per layer; d arg/db = -1 for every neuron.
- `current_grad(p) -> q`: dh'/dcur, constant per layer (the SNU's (1,), ALIF's (1, 0)).

The same functions serve both engines: torch calls them with tensors (the eager loop, where autograd
differentiates `step` for BPTT), numba compiles them for the fused kernels (imc_osttp/fused_kernels.py)
with scalars. So they use only arithmetic, comparisons on p's flags, tuples and `abs`, and no numeric
literals: constants come from p (`p.one`), which the fused engine types as the arrays' dtype, so float32
stays float32 and both engines do the same operations in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..layers import LayerSpec

# every function `elementwise` marks; the fused engine hands them to numba before it compiles kernels
ELEMENTWISE: list[Callable[..., Any]] = []


def elementwise(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark `fn` as compilable by numba (the fused engine registers it); torch calls it unchanged."""
    ELEMENTWISE.append(fn)
    return fn


@dataclass(frozen=True)
class Neuron:
    """A neuron model (module docstring): its state variables and functions."""

    name: str
    states: tuple[str, ...]  # k names
    params: Callable[[LayerSpec], NamedTuple]  # the layer's scalars, as Python numbers
    step: Callable[..., Any]
    jacobian: Callable[..., Any]
    spike_grad: Callable[[Any], tuple[Any, ...]]
    current_grad: Callable[[Any], tuple[Any, ...]]

    @property
    def k(self) -> int:
        """State variables per unit: the size of the per-unit Jacobian."""
        return len(self.states)
