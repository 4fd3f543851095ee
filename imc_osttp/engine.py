"""The time loops' two implementations, and the one place that chooses between them.

A network's hidden layers, their traces and the leaky readout advance through chunks of steps;
what loops over the steps is an engine. The eager engine (imc_osttp/eager.py) does it step by step
in torch, on any device, differentiable by autograd: the reference. The fused engine
(imc_osttp/fused.py) does it in numba kernels built from each neuron's one definition, on CPU
tensors, with the same operations in the same order. The network picks one when it is built.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .network import LayerChunk, LayerState
    from .neurons.base import Neuron
    from .neurons.surrogates import Surrogate


class Dynamics(NamedTuple):
    """One hidden layer's neuron as an engine runs it: the model, the layer's parameters (Python numbers)
    and the surrogate derivative."""

    neuron: Neuron
    params: NamedTuple
    surrogate: Surrogate


class TraceChunk(NamedTuple):
    """What `Engine.traces` hands the exact traces (rules/traces.py): G_s q [B, K, n], F_s [k, B, K, n]
    (None unless asked), A_{K-1} [k, k, B, n] and Σ_s g_s rᵀA_s [k, B, n] (None unless a trace is held),
    and the threshold's Σ_{b,s} g (rᵀε_b − 1) [n]."""

    G: Tensor
    F: Tensor | None
    A_last: Tensor | None
    gA: Tensor | None
    gb: Tensor


class Engine(Protocol):
    name: str

    def layer(self, dyn: Dynamics, cur: Tensor, before: LayerState, b: Tensor, H: Tensor | None,
              recur: Callable[[Tensor], Tensor] | None, differentiable: bool) -> tuple[Tensor, Tensor, Tensor]:
        """A layer over a chunk from its input currents cur = x W [B, K, n] and its state before: states
        [k, B, K, n], spikes and surrogates [B, K, n]. A recurrent layer adds y^{t-1} H, the product
        `recur(y)` (eager) or with the matrix H (fused). Differentiable in cur, b and H if asked."""

    def jacobian(self, dyn: Dynamics, chunk: LayerChunk, before: LayerState, b: Tensor, hd: Tensor | None,
                 exact: bool) -> tuple[Tensor, Tensor]:
        """The neuron's (J [k, k, B, K, n], c [k, B, K, n]) at every step of the chunk (SPEC §2)."""

    def traces(self, dyn: Dynamics, chunk: LayerChunk, before: LayerState, b: Tensor, hd: Tensor | None,
               exact: bool, g: Tensor, eps_b: Tensor, carry: bool, held: bool) -> TraceChunk:
        """The exact traces' per-unit recursions over the chunk (rules/traces.py); advances eps_b [k, B, n]."""

    def scan(self, state: Tensor, coef: Tensor | float, drive: Tensor, reverse: bool = False) -> Tensor:
        """o_k = coef_k ⊙ o_{k∓1} + drive_k over a chunk [B, K, n] from `state` (no autograd)."""

    def linear_scan(self, state: Tensor, drive: Tensor, tau: float) -> Tensor:
        """o_k = tau o_{k-1} + drive_k over a chunk, differentiable in state and drive."""


def shift_in(first: Tensor, seq: Tensor) -> Tensor:
    """[first, seq_0, ..., seq_{K-2}] along the step axis (-2): the previous-step values of a chunk [..., K, n]."""
    return torch.cat([first.unsqueeze(-2), seq[..., :-1, :]], dim=-2)


class EngineNotice(UserWarning):
    """The fused engine was asked for and the eager one runs: said once per reason and process."""


def choose(requested: str, like: Tensor, products_are_reads: bool, recurrent: bool) -> Engine:
    """Fused where kernels can run what the eager loop does (CPU tensors, and a recurrent layer's y H a
    plain product, not a noisy tile read); eager on CUDA, for analog recurrent layers, and when asked.
    When the request is overruled, one line says why (an `EngineNotice`)."""
    from .eager import EagerEngine

    if requested == "fused":
        if like.device.type != "cpu":
            why = f"the fused kernels run on CPU tensors, and this network is on {like.device.type}"
        elif recurrent and not products_are_reads:
            why = "the recurrent products are reads of an analog tile (with its noise), which the kernels do not run"
        else:
            from .fused import FusedEngine

            return FusedEngine()
        warnings.warn(f"train.engine: eager, not fused: {why}", EngineNotice, stacklevel=2)
    return EagerEngine()
