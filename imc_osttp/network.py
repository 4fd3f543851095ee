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
from .config import ModelConfig, RunConfig
from .neuron import SURROGATES, jacobian_diag, membrane, spike
from .readout import Readout, ReadoutChunk, ReadoutState, make_readout

PARAM_NAMES = ("W1", "H1", "b1", "W2", "c2")
MATRICES = ("W1", "H1", "W2")


def param_names(cfg: ModelConfig) -> list[str]:
    """The parameters this model has."""
    names = ["W1"] + (["H1"] if cfg.recurrent else []) + ["b1", "W2"]
    return names + (["c2"] if cfg.readout_bias else [])


def trainable_names(cfg: RunConfig) -> list[str]:
    """What a run trains: the model's parameters, less the thresholds unless `train_threshold`, less
    those that `optim.lr_scale` freezes (0): those get no trace, no update and no share of grad_clip."""
    model, scale = cfg.model, cfg.optim.lr_scale
    return [n for n in param_names(model) if (n != "b1" or model.train_threshold) and scale.get(n, 1.0) > 0]


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
    """The state after a step: membrane, spikes, surrogate, readout state."""

    s: Tensor
    y: Tensor
    psi: Tensor
    readout: ReadoutState


@dataclass
class Chunk:
    """K steps of the network, batch first: [B, K, ...]."""

    s: Tensor
    y: Tensor
    psi: Tensor
    readout: ReadoutChunk

    @property
    def logits(self) -> Tensor:
        return self.readout.logits


def shift_in(first: Tensor, seq: Tensor) -> Tensor:
    """[first, seq_0, ..., seq_{K-2}]: the previous-step values of a chunk [B, K, n]."""
    return torch.cat([first.unsqueeze(1), seq[:, :-1]], dim=1)


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

    def _mvm(self, name: str, x: Tensor) -> Tensor:
        """x W for x [B, K, in], as one backend call on [B*K, in]."""
        B, K, _ = x.shape
        return self.backend.mvm(name, x.reshape(B * K, -1)).reshape(B, K, -1)

    def run(self, x: Tensor, state: StepState, differentiable: bool = False) -> tuple[Chunk, StepState]:
        """Advance K steps (x [B, K, m]). Only the membrane recursion loops over time; the input,
        readout and surrogate products are one batched call each for the whole chunk."""
        be, cfg = self.backend, self.cfg
        b = be.read("b1")
        # unbind, not current[:, k]: autograd then adds one gradient per step instead of
        # materialising a [B, K, n] zero tensor per step (quadratic in K for BPTT)
        currents = self._mvm("W1", x).unbind(1)
        s, y = state.s, state.y
        S, Y = [], []
        for i_x in currents:
            i_k = i_x + be.mvm("H1", y) if cfg.recurrent else i_x
            s = membrane(i_k, s, y, b, cfg.decay, cfg.reset)
            y = spike(s - b, cfg.surrogate) if differentiable else (s - b > 0).to(s.dtype)
            S.append(s)
            Y.append(y)
        S_, Y_ = torch.stack(S, 1), torch.stack(Y, 1)
        psi = self.surrogate(S_.detach() - b.detach())
        drive = self._mvm("W2", Y_)
        if cfg.readout_bias:
            drive = drive + be.read("c2")
        ro, ro_state = self.readout.run(drive, Y_, state.readout)
        return Chunk(S_, Y_, psi, ro), StepState(s, y, psi[:, -1], ro_state)

    def jacobian(self, chunk: Chunk, before: StepState, exact: bool) -> tuple[Tensor, Tensor]:
        """(D^t, c^t) [B, K, n] for the traces of every step of the chunk (SPEC §2)."""
        h_diag = torch.diagonal(self.backend.read("H1")) if self.cfg.recurrent else None
        return jacobian_diag(shift_in(before.s, chunk.s), shift_in(before.y, chunk.y),
                             shift_in(before.psi, chunk.psi), self.backend.read("b1"), self.cfg.decay,
                             self.cfg.reset, h_diag, exact)

    def forward(self, x: Tensor, differentiable: bool = False) -> tuple[Tensor, Tensor]:
        """Run a whole batch [B, T, m]: logits [B, T, k] and hidden spikes [B, T, n]."""
        chunk, _ = self.run(x, self.init_state(x.shape[0], x), differentiable)
        return chunk.logits, chunk.y
