"""The SNU network: parameters, the fixed feedback matrix B, and one time step.

Parameters follow SPEC's row-vector convention: W1 [m, n], H1 [n, n]
(recurrent only), b1 [n], W2 [n, k], c2 [k] (readout bias). Where a weight
lives (a torch tensor or an analog tile) is the backend's business: the
network only asks it for products `x W`, `d Wᵀ` and `y* B`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .backends.base import Backend
from .config import ModelConfig
from .neuron import SURROGATES, jacobian_diag, membrane, spike
from .readout import Readout, ReadoutState, make_readout

PARAM_NAMES = ("W1", "H1", "b1", "W2", "c2")
MATRICES = ("W1", "H1", "W2")


def param_names(cfg: ModelConfig) -> list[str]:
    """The parameters this model has."""
    names = ["W1"] + (["H1"] if cfg.recurrent else []) + ["b1", "W2"]
    return names + (["c2"] if cfg.readout_bias else [])


def trainable_names(cfg: ModelConfig) -> list[str]:
    return [n for n in param_names(cfg) if n != "b1" or cfg.train_threshold]


def init_parameters(cfg: ModelConfig, m: int, k: int, generator: torch.Generator,
                    dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Uniform ±gain/sqrt(fan_in) weights (torch.nn.Linear's rule), threshold `threshold_init`."""
    n = cfg.hidden

    def uniform(shape: tuple[int, ...], fan_in: int) -> Tensor:
        bound = cfg.init_gain / math.sqrt(fan_in)
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1).mul(bound).to(dtype)

    params = {"W1": uniform((m, n), m), "b1": torch.full((n,), cfg.threshold_init, dtype=dtype),
              "W2": uniform((n, k), n)}
    if cfg.recurrent:
        params["H1"] = uniform((n, n), n)
    if cfg.readout_bias:
        params["c2"] = torch.zeros(k, dtype=dtype)
    return params


def init_feedback(k: int, n: int, scale: float, generator: torch.Generator,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """The fixed random projection B [k, n] of OSTL-rnd, DRTP and OSTTP (never trained)."""
    bound = scale / math.sqrt(k)
    return (torch.rand((k, n), generator=generator, dtype=torch.float64) * 2 - 1).mul(bound).to(dtype)


@dataclass
class StepState:
    """Hidden layer state after a step, plus the readout's state."""

    s: Tensor
    y: Tensor
    psi: Tensor
    readout: ReadoutState


class SNUNet:
    """One SNU layer and its readout, computing through a backend."""

    def __init__(self, cfg: ModelConfig, backend: Backend, n_in: int, n_out: int) -> None:
        self.cfg = cfg
        self.backend = backend
        self.n_in, self.n_out = n_in, n_out
        self.readout: Readout = make_readout(cfg.readout, cfg.tau)
        self.surrogate = SURROGATES[cfg.surrogate]

    def init_state(self, batch: int, like: Tensor) -> StepState:
        z = like.new_zeros(batch, self.cfg.hidden)
        return StepState(z, z, z, self.readout.init(batch, self.cfg.hidden, self.n_out, like))

    def step(self, x: Tensor, prev: StepState, differentiable: bool = False) -> tuple[StepState, Tensor]:
        """Advance one step: returns the new state and the readout logits."""
        be, cfg = self.backend, self.cfg
        b = be.read("b1")
        current = be.mvm("W1", x)
        if cfg.recurrent:
            current = current + be.mvm("H1", prev.y)
        s = membrane(current, prev.s, prev.y, b, cfg.decay, cfg.reset)
        v = s - b
        y = spike(v, cfg.surrogate) if differentiable else (v > 0).to(v.dtype)
        psi = self.surrogate(v.detach())
        drive = be.mvm("W2", y)
        if cfg.readout_bias:
            drive = drive + be.read("c2")
        ro, logits = self.readout.step(prev.readout, y, drive)
        return StepState(s, y, psi, ro), logits

    def jacobian(self, prev: StepState, exact: bool) -> tuple[Tensor, Tensor]:
        """(D^t, c^t) for the traces, from the state before this step."""
        h_diag = torch.diagonal(self.backend.read("H1")) if self.cfg.recurrent else None
        return jacobian_diag(prev.s, prev.y, prev.psi, self.backend.read("b1"), self.cfg.decay,
                             self.cfg.reset, h_diag, exact)

    def forward(self, x: Tensor, differentiable: bool = False) -> tuple[Tensor, Tensor]:
        """Run a whole batch [B, T, m]: logits [B, T, k] and hidden spikes [B, T, n]."""
        state = self.init_state(x.shape[0], x)
        logits, spikes = [], []
        for t in range(x.shape[1]):
            state, out = self.step(x[:, t], state, differentiable)
            logits.append(out)
            spikes.append(state.y)
        return torch.stack(logits, 1), torch.stack(spikes, 1)
