"""The SNU network: L hidden layers, the readout, the fixed feedback matrices B_l, and time steps.

Parameters follow SPEC's row-vector convention, per hidden layer l (`layers.py`):
W{l} [n_{l-1}, n_l], H{l} [n_l, n_l] (recurrent only), b{l} [n_l]; the readout is
layer L+1 with W{L+1} [n_L, k] and c{L+1} [k]. Where a weight lives (a torch tensor
or an analog tile) is the backend's business: the network only asks it for
products `x W`, `d Wᵀ` and `y* B`, where B = [B_1 … B_L] is the stack [k, Σ n_l].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import fused
from .backends.base import Backend
from .config import ModelConfig, RunConfig
from .layers import LayerSpec, readout_names
from .layers import param_names as layer_param_names
from .neuron import SURROGATES, jacobian_diag, membrane, spike
from .readout import Readout, ReadoutChunk, ReadoutState, make_readout


def param_names(cfg: ModelConfig) -> list[str]:
    """The parameters this model has."""
    return layer_param_names(cfg.layers(), cfg.readout_bias)


def trainable_names(cfg: RunConfig) -> list[str]:
    """What a run trains: the model's parameters, less the thresholds unless `train_threshold`, less
    those that `optim.lr_scale` freezes (0): those get no trace, no update and no share of grad_clip."""
    model, scale = cfg.model, cfg.optim.lr_scale
    thresholds = {layer.b for layer in model.layers()}
    return [n for n in param_names(model)
            if (n not in thresholds or model.train_threshold) and scale.get(n, 1.0) > 0]


def init_parameters(cfg: ModelConfig, m: int, k: int, generator: torch.Generator,
                    dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Uniform ±gain/sqrt(fan_in) weights (torch.nn.Linear's rule), thresholds `threshold_init`.

    Drawn in the order W1 … W{L+1}, then the H{l}: one hidden layer draws W1, W2, H1 as it always did."""

    def uniform(shape: tuple[int, ...], fan_in: int) -> Tensor:
        bound = cfg.init_gain / math.sqrt(fan_in)
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1).mul(bound).to(dtype)

    layers = cfg.layers()
    sizes = [m] + cfg.widths + [k]
    w_out, c_out = readout_names(len(layers))
    weights = {f"W{i + 1}": uniform((sizes[i], sizes[i + 1]), sizes[i]) for i in range(len(layers) + 1)}
    params: dict[str, Tensor] = {}
    for layer in layers:
        params[layer.W] = weights[layer.W]
        params[layer.b] = torch.full((layer.n,), cfg.threshold_init, dtype=dtype)
    params[w_out] = weights[w_out]
    for layer in layers:
        if layer.recurrent:
            params[layer.H] = uniform((layer.n, layer.n), layer.n)
    if cfg.readout_bias:
        params[c_out] = torch.zeros(k, dtype=dtype)
    return {name: params[name] for name in layer_param_names(layers, cfg.readout_bias)}


def init_feedback(k: int, widths: int | list[int], scale: float, generator: torch.Generator,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """The fixed random projections `[B_1 … B_L]`, `[k, Σ n_l]`, of OSTL-rnd, DRTP and OSTTP (never trained).

    Each B_l ~ U(±scale/sqrt(k)) is drawn in turn from one seeded stream, so the B_l are
    independent and one hidden layer's B is the one it always was."""
    bound = scale / math.sqrt(k)
    blocks = [(torch.rand((k, n), generator=generator, dtype=torch.float64) * 2 - 1).mul(bound)
              for n in ([widths] if isinstance(widths, int) else widths)]
    return torch.cat(blocks, 1).to(dtype)


@dataclass
class LayerState:
    """A hidden layer after a step: membrane, spikes, surrogate."""

    s: Tensor
    y: Tensor
    psi: Tensor


@dataclass
class StepState:
    """The network after a step: every hidden layer's state and the readout's."""

    layers: list[LayerState]
    readout: ReadoutState


@dataclass
class LayerChunk:
    """K steps of one hidden layer, batch first: [B, K, n_l]; `x` is the layer's input [B, K, n_{l-1}]."""

    x: Tensor
    s: Tensor
    y: Tensor
    psi: Tensor


@dataclass
class Chunk:
    """K steps of the network: every hidden layer, and the readout."""

    layers: list[LayerChunk]
    readout: ReadoutChunk

    @property
    def logits(self) -> Tensor:
        return self.readout.logits

    @property
    def s(self) -> Tensor:
        """The top hidden layer's (the only one's, for one layer): what the readout reads."""
        return self.layers[-1].s

    @property
    def y(self) -> Tensor:
        return self.layers[-1].y

    @property
    def psi(self) -> Tensor:
        return self.layers[-1].psi

    def spikes(self) -> Tensor:
        """Every hidden unit's spikes [B, K, Σ n_l] (one layer's own tensor: no copy)."""
        if len(self.layers) == 1:
            return self.layers[0].y
        return torch.cat([layer.y for layer in self.layers], -1)


def shift_in(first: Tensor, seq: Tensor) -> Tensor:
    """[first, seq_0, ..., seq_{K-2}]: the previous-step values of a chunk [B, K, n]."""
    return torch.cat([first.unsqueeze(1), seq[:, :-1]], dim=1)


class SNUNet:
    """L hidden SNU layers and a readout, computing through a backend."""

    def __init__(self, cfg: ModelConfig, backend: Backend, n_in: int, n_out: int, engine: str = "fused") -> None:
        self.cfg = cfg
        self.backend = backend
        self.n_in, self.n_out = n_in, n_out
        self.layers: list[LayerSpec] = cfg.layers()
        self.out_w, self.out_c = readout_names(len(self.layers))
        self.fused = engine == "fused"
        self.readout: Readout = make_readout(cfg.readout, cfg.tau, self.fused)
        self.surrogate = SURROGATES[cfg.surrogate]

    @property
    def n_hidden(self) -> int:
        """Hidden units over all layers (the denominator of the spike rate)."""
        return sum(layer.n for layer in self.layers)

    def fan_in(self, layer: LayerSpec) -> int:
        return self.n_in if layer.index == 1 else self.layers[layer.index - 2].n

    def init_state(self, batch: int, like: Tensor) -> StepState:
        zeros = [like.new_zeros(batch, layer.n) for layer in self.layers]
        return StepState([LayerState(z, z, z) for z in zeros],
                         self.readout.init(batch, self.layers[-1].n, self.n_out, like))

    def _mvm(self, name: str, x: Tensor) -> Tensor:
        """x W for x [B, K, in], as one backend call on [B*K, in]."""
        B, K, _ = x.shape
        return self.backend.mvm(name, x.reshape(B * K, -1)).reshape(B, K, -1)

    def _run_layer(self, layer: LayerSpec, x: Tensor, state: LayerState,
                   differentiable: bool) -> tuple[LayerChunk, LayerState]:
        """K steps of one layer. Only the membrane recursion loops over time; the input and
        surrogate products are one batched call each for the whole chunk."""
        be = self.backend
        b = be.read(layer.b)
        if self._fuses(layer, x, b):
            H = be.read(layer.H) if layer.recurrent else None
            S_, Y_, psi = fused.snu_chunk(self._mvm(layer.W, x), state.s, state.y, b, H, layer.decay,
                                          layer.reset, self.cfg.surrogate)
            if not differentiable:
                S_, Y_ = S_.detach(), Y_.detach()
            return LayerChunk(x, S_, Y_, psi), LayerState(S_[:, -1], Y_[:, -1], psi[:, -1])
        # unbind, not current[:, k]: autograd then adds one gradient per step instead of
        # materialising a [B, K, n] zero tensor per step (quadratic in K for BPTT)
        currents = self._mvm(layer.W, x).unbind(1)
        s, y = state.s, state.y
        S, Y = [], []
        for i_x in currents:
            i_k = i_x + be.mvm(layer.H, y) if layer.recurrent else i_x
            s = membrane(i_k, s, y, b, layer.decay, layer.reset)
            y = spike(s - b, self.cfg.surrogate) if differentiable else (s - b > 0).to(s.dtype)
            S.append(s)
            Y.append(y)
        S_, Y_ = torch.stack(S, 1), torch.stack(Y, 1)
        psi = self.surrogate(S_.detach() - b.detach())
        return LayerChunk(x, S_, Y_, psi), LayerState(s, y, psi[:, -1])

    def _fuses(self, layer: LayerSpec, x: Tensor, b: Tensor) -> bool:
        """The compiled loop runs where it computes what the eager one does: on CPU tensors, and for a
        recurrent layer only where y H is a plain product (an analog tile's read is noisy per call)."""
        return (self.fused and fused.applies(x, b)
                and (not layer.recurrent or self.backend.products_are_reads))

    def run(self, x: Tensor, state: StepState, differentiable: bool = False) -> tuple[Chunk, StepState]:
        """Advance K steps (x [B, K, m]), one layer after the other over the whole chunk: a layer
        reads only the layers below it at the same step, so this order keeps every step causal."""
        chunks, states = [], []
        for layer, before in zip(self.layers, state.layers, strict=True):
            chunk, after = self._run_layer(layer, x, before, differentiable)
            chunks.append(chunk)
            states.append(after)
            x = chunk.y
        drive = self._mvm(self.out_w, x)
        if self.cfg.readout_bias:
            drive = drive + self.backend.read(self.out_c)
        ro, ro_state = self.readout.run(drive, x, state.readout)
        return Chunk(chunks, ro), StepState(states, ro_state)

    def jacobian(self, layer: LayerSpec, chunk: LayerChunk, before: LayerState,
                 exact: bool) -> tuple[Tensor, Tensor]:
        """(D^t, c^t) [B, K, n_l] of one layer for the traces of every step of the chunk (SPEC §2)."""
        h_diag = torch.diagonal(self.backend.read(layer.H)) if layer.recurrent else None
        b = self.backend.read(layer.b)
        if self.fused and chunk.s.shape[1] > 1 and fused.applies(chunk.s, b):
            return fused.jacobian(chunk.s, chunk.y, chunk.psi, before.s, before.y, before.psi, b.detach(),
                                  None if h_diag is None else h_diag.detach(), layer.decay, layer.reset, exact)
        return jacobian_diag(shift_in(before.s, chunk.s), shift_in(before.y, chunk.y),
                             shift_in(before.psi, chunk.psi), b, layer.decay,
                             layer.reset, h_diag, exact)

    def split(self, stacked: Tensor) -> list[Tensor]:
        """[…, Σ n_l] → one [… , n_l] per layer (e.g. y* B into each y* B_l)."""
        return list(torch.split(stacked, [layer.n for layer in self.layers], dim=-1))

    def forward(self, x: Tensor, differentiable: bool = False) -> tuple[Tensor, Tensor]:
        """Run a whole batch [B, T, m]: logits [B, T, k] and every hidden layer's spikes [B, T, Σ n_l]."""
        chunk, _ = self.run(x, self.init_state(x.shape[0], x), differentiable)
        return chunk.logits, chunk.spikes()
