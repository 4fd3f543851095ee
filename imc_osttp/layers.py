"""A network's hidden layers as a list, and the names of their parameters.

Layer l = 1..L owns W{l} [n_{l-1}, n_l], H{l} [n_l, n_l] when recurrent, and the
threshold b{l}; the readout is layer L+1 with W{L+1} and c{L+1}. One hidden layer
thus keeps the names W1, H1, b1, W2, c2 that configs, stored results and pulse
metrics of single-layer runs already use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Reset = Literal["full", "soft"]


@dataclass(frozen=True)
class LayerSpec:
    """One hidden layer: its place in the stack and its dynamics (a neuron model of imc_osttp.neurons)."""

    index: int  # 1-based, as in the paper's eqs. 7, 10, 11
    n: int
    recurrent: bool
    reset: Reset
    decay: float
    neuron: str = "snu"
    neuron_params: tuple[tuple[str, float], ...] = ()  # the model's own settings (e.g. ALIF's beta, decay)

    @property
    def W(self) -> str:
        return f"W{self.index}"

    @property
    def H(self) -> str:
        return f"H{self.index}"

    @property
    def b(self) -> str:
        return f"b{self.index}"

    def names(self) -> list[str]:
        """The layer's parameters, in the order the network stores them."""
        return [self.W] + ([self.H] if self.recurrent else []) + [self.b]

    def meta(self) -> dict[str, object]:
        """What a reader of a dump needs to rebuild the layer."""
        return {"n": self.n, "recurrent": self.recurrent, "reset": self.reset, "decay": self.decay}


def readout_names(depth: int) -> tuple[str, str]:
    """(weights, bias) of the readout, layer L+1."""
    return f"W{depth + 1}", f"c{depth + 1}"


def matrix_slots(depth: int) -> list[str]:
    """W1, H1, …, WL, HL, W{L+1}: every matrix a network of this depth may hold, present or not.
    A matrix's position here seeds its analog tile, so one layer keeps the seeds it always had."""
    slots = [name for l in range(1, depth + 1) for name in (f"W{l}", f"H{l}")]
    return slots + [readout_names(depth)[0]]


def param_names(layers: list[LayerSpec], readout_bias: bool) -> list[str]:
    """Every parameter of the network, layer by layer, then the readout."""
    w_out, c_out = readout_names(len(layers))
    return [n for layer in layers for n in layer.names()] + [w_out] + ([c_out] if readout_bias else [])
