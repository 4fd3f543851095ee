"""Deploy modes that mitigate the restart of drift clocks by writes (issue 22), registered in `deploy.MODES`.

aihwkit restarts a device's drift clock when a write moves it (a partial SET restarts PCM drift, Boybat et
al., NVMTS 2018), and the whole conductance of a restarted device then drifts anew, while global drift
compensation scales every device by the factor of the old ones: a device written at chip age T reads
(T/t0)^ν too large right after the write, an error that fades only once the chip's age has doubled. The
modes of issue 11 that learn on the chip are worse than a frozen one from one day on. These modes try the
remedies of the literature (settings: the deploy file's `mitigation` section, `deploy.MitigationConfig`):

- `frozen_pcdc`, `learning_pcdc`: aihwkit's PerColumnDriftCompensation, one factor per output column.
- `learning_gated` (error-gated writes): global compensation; an update is written only while the running
  mean of the stream's NLL exceeds its mean over the first `gate_window` updates by `gate_margin`, so a chip
  that has not degraded is not written (and its clocks are not restarted).
- `learning_digital`: global compensation; OSTTP learns only the digital parameters (thresholds, readout
  bias), the array is never written: the digital periphery takes up what drift changes, as adaptive batch
  normalisation statistics do for PCM inference (Joshi et al., Nat. Commun. 2020).
- `learning_transfer` (two timescales, Ambrogio et al., Nature 2018, the fast timescale on the host): global
  compensation; the host keeps a copy of the weights (read back once at deployment) and adds every update
  to it; every `transfer_every` seconds every device is reprogrammed to it (program-and-verify, with
  programming noise) and the compensation re-referenced, so the chip is uniformly young again. The price: a
  digital copy of every weight on the host. Thresholds and biases learn at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .deploy import MODES, MitigationConfig, Mode


@dataclass
class GatedMode(Mode):
    """Writes an update only while the running mean of the stream's NLL exceeds its reference by the margin;
    the first `gate_window` updates measure the reference and are not written."""

    recent: list[float] = field(default_factory=list)
    reference: float | None = None
    margin: float = 0.0
    window: int = 1

    def start(self, backend: Any, mitigation: MitigationConfig) -> None:
        super().start(backend, mitigation)
        self.margin, self.window = mitigation.gate_margin, mitigation.gate_window

    def accept(self, nll: float) -> bool:
        self.recent = [*self.recent, nll][-self.window:]
        if self.reference is None:
            if len(self.recent) == self.window:
                self.reference = sum(self.recent) / len(self.recent)
            return False
        return sum(self.recent) / len(self.recent) > self.reference + self.margin

    def write(self, backend: Any, grads: dict[str, Any], nll: float) -> bool:
        if not self.accept(nll):
            return False
        backend.apply(grads)
        return True


def digital_part(backend: Any, grads: dict[str, Any]) -> dict[str, Any]:
    """The updates of the digital parameters (thresholds, biases): every one not held by a tile."""
    return {name: grad for name, grad in grads.items() if name not in backend.tiles}


@dataclass
class DigitalMode(Mode):
    """Learns only what is digital: the array is never written, so no drift clock restarts."""

    def write(self, backend: Any, grads: dict[str, Any], nll: float) -> bool:
        digital = digital_part(backend, grads)
        if digital:
            backend.apply(digital)
        return bool(digital)


@dataclass
class TransferMode(Mode):
    """Two timescales: the host's copy of the weights takes every update (ΔW = -lr·grad) and every tile is
    reprogrammed to it every `transfer_every` chip seconds. A transfer never reads the array back: a read
    carries IO noise and every device's drift error, and reprogramming to a read-back copies them, so errors
    would pile up transfer after transfer (a pilot that did: test NLL 9.61, 9.69, 9.93 after 1, 2, 3 hourly
    transfers, 19.3 after a week of daily ones)."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    transfers: int = 0
    every: float = 0.0
    noise: str = "none"

    def start(self, backend: Any, mitigation: MitigationConfig) -> None:
        super().start(backend, mitigation)
        self.every, self.noise = mitigation.transfer_every, mitigation.program_noise
        self.weights = {name: read_back(tile.tile, mitigation.read_repeats) for name, tile in backend.tiles.items()}

    def write(self, backend: Any, grads: dict[str, Any], nll: float) -> bool:
        from .optim import group_lrs

        lrs = group_lrs(backend.optimizer)
        for name, grad in grads.items():
            if name in self.weights:
                self.weights[name] -= lrs[name] * grad.detach().transpose(0, 1).float()
        digital = digital_part(backend, grads)
        if digital:  # thresholds and biases are digital: they learn at once, as in every learning mode
            backend.apply(digital)
        return True

    def next_event(self) -> float:
        return (self.transfers + 1) * self.every

    @torch.no_grad()
    def event(self, backend: Any) -> None:
        noise = program_noise_model(self.noise)
        for name, tile in backend.tiles.items():
            self.programmed += program(tile.tile, self.weights[name], noise)
        self.transfers += 1
        backend.forget_views()
        backend.start_drift_compensation()  # a new reference: the chip was just reprogrammed


def program_noise_model(kind: str):
    """aihwkit's programming-noise model of one PCM device, or None."""
    from aihwkit.inference import HermesNoiseModel, PCMLikeNoiseModel

    return {"pcm": PCMLikeNoiseModel(), "hermes": HermesNoiseModel(num_devices=1), "none": None}[kind]


@torch.no_grad()
def read_back(tile, repeats: int) -> torch.Tensor:
    """The tile's weights [out, in] as the chip reads them: one-hot inputs through its forward pass (IO noise,
    converters, digital output scale and compensation), averaged over `repeats` reads."""
    eye = torch.eye(tile.in_size)
    return sum(tile.forward(eye) for _ in range(repeats)).transpose(0, 1) / repeats


@torch.no_grad()
def program(tile, target: torch.Tensor, noise) -> int:
    """Program-and-verify every device to `target` [out, in] (aihwkit's set_weights: weight scaling and
    differential pairs as at training start), then each device of a unit cell with the noise model's
    programming noise (its conductance range mapped to the device's; a single-device tile gets none);
    returns the devices programmed."""
    from .knobs import pulsed_devices

    tile.set_weights(target)
    names = list(tile.tile.get_hidden_parameter_names())
    conductances = [n for n in names if n.startswith("hidden_weights_")]
    depth = max((n.count("_") for n in conductances), default=0)  # devices are the innermost level
    devices = [i for i, n in enumerate(names) if n in conductances and n.count("_") == depth]
    if noise is not None and devices:
        hidden = tile.tile.get_hidden_parameters()
        scale = noise.g_max / max(d.w_max for d in pulsed_devices(tile.rpu_config))
        for i in devices:
            hidden[i] = noise.apply_programming_noise_to_conductance(hidden[i] * scale) / scale
        derive_pair_weights(hidden, names)
        tile.tile.set_hidden_parameters(hidden)
    return max(len(devices), 1) * target.numel()  # a single-device tile: one device per weight


def derive_pair_weights(hidden: torch.Tensor, names: list[str]) -> None:
    """Set each differential pair's weight (hidden_weights_<k>) to G+ - G- of its devices (_1_<k>, _0_<k>)."""
    for i, name in enumerate(names):
        pair = name[len("hidden_weights_"):]
        if name.startswith("hidden_weights_") and pair.isdigit() and f"hidden_weights_1_{pair}" in names:
            plus, minus = names.index(f"hidden_weights_1_{pair}"), names.index(f"hidden_weights_0_{pair}")
            hidden[i] = hidden[plus] - hidden[minus]


MODES.update({
    "frozen_pcdc": Mode(learns=False, compensated=True, per_column=True),
    "learning_pcdc": Mode(learns=True, compensated=True, per_column=True),
    "learning_gated": GatedMode(learns=True, compensated=True),
    "learning_digital": DigitalMode(learns=True, compensated=True),
    "learning_transfer": TransferMode(learns=True, compensated=True),
})
