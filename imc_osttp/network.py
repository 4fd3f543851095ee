"""The spiking network: L hidden layers of a neuron model, the readout, the fixed feedback matrices B_l,
and time steps.

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

from . import registry
from .backends.base import Backend
from .config import ModelConfig, RunConfig
from .engine import Dynamics, Engine, TraceChunk, choose
from .layers import LayerSpec, readout_names
from .layers import param_names as layer_param_names
from .neurons.surrogates import SURROGATES
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
    """A hidden layer after a step: its neuron's state variables [k, B, n], spikes and surrogate [B, n]."""

    h: Tensor
    y: Tensor
    psi: Tensor


@dataclass
class StepState:
    """The network after a step: every hidden layer's state and the readout's."""

    layers: list[LayerState]
    readout: ReadoutState


@dataclass
class LayerChunk:
    """K steps of one hidden layer, batch first: states [k, B, K, n_l], spikes and surrogates [B, K, n_l];
    `x` is the layer's input [B, K, n_{l-1}]."""

    x: Tensor
    h: Tensor
    y: Tensor
    psi: Tensor

    @property
    def s(self) -> Tensor:
        """The membrane [B, K, n_l] (the neuron's first state variable)."""
        return self.h[0]

    def last(self) -> LayerState:
        return LayerState(self.h[:, :, -1], self.y[:, -1], self.psi[:, -1])


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
        """The top hidden layer's membrane (the only one's, for one layer)."""
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


class SNUNet:
    """L hidden layers of spiking neurons (the SNU, or another model of imc_osttp.neurons) and a readout,
    computing through a backend. The time loops run on the engine chosen when the network is built."""

    def __init__(self, cfg: ModelConfig, backend: Backend, n_in: int, n_out: int, engine: str = "fused") -> None:
        self.cfg = cfg
        self.backend = backend
        self.n_in, self.n_out = n_in, n_out
        self.layers: list[LayerSpec] = cfg.layers()
        self.out_w, self.out_c = readout_names(len(self.layers))
        self.engine: Engine = choose(engine, backend.read(self.layers[0].b), backend.products_are_reads,
                                     any(layer.recurrent for layer in self.layers))
        self.readout: Readout = make_readout(cfg.readout, cfg.tau, self.engine)
        neurons = [registry.neuron(layer.neuron) for layer in self.layers]
        self.dynamics = [Dynamics(neuron, neuron.params(layer), SURROGATES[cfg.surrogate])
                         for neuron, layer in zip(neurons, self.layers, strict=True)]

    @property
    def n_hidden(self) -> int:
        """Hidden units over all layers (the denominator of the spike rate)."""
        return sum(layer.n for layer in self.layers)

    def fan_in(self, layer: LayerSpec) -> int:
        return self.n_in if layer.index == 1 else self.layers[layer.index - 2].n

    def init_state(self, batch: int, like: Tensor) -> StepState:
        states = [LayerState(like.new_zeros(dyn.neuron.k, batch, layer.n), like.new_zeros(batch, layer.n),
                             like.new_zeros(batch, layer.n))
                  for layer, dyn in zip(self.layers, self.dynamics, strict=True)]
        return StepState(states, self.readout.init(batch, self.layers[-1].n, self.n_out, like))

    def _mvm(self, name: str, x: Tensor) -> Tensor:
        """x W for x [B, K, in], as one backend call on [B*K, in]."""
        B, K, _ = x.shape
        return self.backend.mvm(name, x.reshape(B * K, -1)).reshape(B, K, -1)

    def _run_layer(self, layer: LayerSpec, x: Tensor, state: LayerState, differentiable: bool) -> LayerChunk:
        """K steps of one layer. Only the neuron's recursion loops over time; the input product is one
        batched call for the whole chunk."""
        be = self.backend
        H = be.read(layer.H) if layer.recurrent else None
        recur = (lambda y: be.mvm(layer.H, y)) if layer.recurrent else None
        S, Y, psi = self.engine.layer(self.dynamics[layer.index - 1], self._mvm(layer.W, x), state,
                                      be.read(layer.b), H, recur, differentiable)
        return LayerChunk(x, S, Y, psi)

    def run(self, x: Tensor, state: StepState, differentiable: bool = False) -> tuple[Chunk, StepState]:
        """Advance K steps (x [B, K, m]), one layer after the other over the whole chunk: a layer
        reads only the layers below it at the same step, so this order keeps every step causal."""
        chunks = []
        for layer, before in zip(self.layers, state.layers, strict=True):
            chunk = self._run_layer(layer, x, before, differentiable)
            chunks.append(chunk)
            x = chunk.y
        drive = self._mvm(self.out_w, x)
        if self.cfg.readout_bias:
            drive = drive + self.backend.read(self.out_c)
        ro, ro_state = self.readout.run(drive, x, state.readout)
        return Chunk(chunks, ro), StepState([chunk.last() for chunk in chunks], ro_state)

    def _local(self, layer: LayerSpec) -> tuple[Dynamics, Tensor, Tensor | None]:
        """The layer's neuron, threshold and recurrent self-weights diag(H) (None without H), as read now."""
        b = self.backend.read(layer.b).detach()
        hd = torch.diagonal(self.backend.read(layer.H)).detach() if layer.recurrent else None
        return self.dynamics[layer.index - 1], b, hd

    def jacobian(self, layer: LayerSpec, chunk: LayerChunk, before: LayerState,
                 exact: bool) -> tuple[Tensor, Tensor]:
        """The neuron's (J [k, k, B, K, n_l], c [k, B, K, n_l]) at every step of the chunk (SPEC §2)."""
        dyn, b, hd = self._local(layer)
        return self.engine.jacobian(dyn, chunk, before, b, hd, exact)

    def trace_chunk(self, layer: LayerSpec, chunk: LayerChunk, before: LayerState, exact: bool, g: Tensor,
                    eps_b: Tensor, carry: bool, held: bool) -> TraceChunk:
        """The exact traces' per-unit recursions over the chunk (imc_osttp/rules/traces.py)."""
        dyn, b, hd = self._local(layer)
        return self.engine.traces(dyn, chunk, before, b, hd, exact, g, eps_b, carry, held)

    def split(self, stacked: Tensor) -> list[Tensor]:
        """[…, Σ n_l] → one [… , n_l] per layer (e.g. y* B into each y* B_l)."""
        return list(torch.split(stacked, [layer.n for layer in self.layers], dim=-1))

    def forward(self, x: Tensor, differentiable: bool = False) -> tuple[Tensor, Tensor]:
        """Run a whole batch [B, T, m]: logits [B, T, k] and every hidden layer's spikes [B, T, Σ n_l]."""
        chunk, _ = self.run(x, self.init_state(x.shape[0], x), differentiable)
        return chunk.logits, chunk.spikes()
