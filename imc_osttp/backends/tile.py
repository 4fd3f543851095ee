"""A pulsed aihwkit tile that writes its updates with a device configuration's writer.

aihwkit builds every tile of every analog layer from `rpu_config.tile_class`
(layers split over several physical tiles included), and its analog
optimizer hands each tile everything stored since the last step as one
`tile.update(x, d)`. `WriterTile` is that extension point, as aihwkit's own
`TorchTransferTile` is: an `AnalogTile` whose update first goes through
aihwkit's `pre_update` (mapping scales, input range, `mapping_lr_scale`) and
then applies the writer the rpu_config carries (`WriterSpec`):

- ``exact``: -lr·Σ d xᵀ is rounded digitally to whole pulses of `step` (the
  remainder below one pulse carried, or rounded at random), clipped to
  `max_pulses` per device and update, and every pulse is fired on its own
  device (Nandakumar et al. 2020's mixed-precision scheme);
- ``stochastic``: aihwkit's own coincident pulse trains, with the pulse size
  calibrated to `step` instead of aihwkit's weight granularity.

The carried remainder and the pulse counters are registered buffers, so
`state_dict`, `deepcopy` and pickle keep them. The writer's parameters travel
inside the rpu_config (`WriterSingleRPUConfig`, `WriterUnitCellRPUConfig`,
`WriterDigitalRankUpdateRPUConfig`: aihwkit's configs with a `writer` and a
`baseline` field), so `imc_osttp.device_configs.load(name)` alone carries the
recipe into any aihwkit model, and the project's analog backend trains on the
same tile. docs/checkpoints.md says what aihwkit 1.2.0 gets wrong in
checkpoints of these tiles and how this class works around it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from aihwkit.simulator.configs import DigitalRankUpdateRPUConfig, SingleRPUConfig, UnitCellRPUConfig
from aihwkit.simulator.parameters import PulseType
from aihwkit.simulator.tiles import AnalogTile
from aihwkit.simulator.tiles.base import AnalogTileStateNames
from aihwkit.simulator.tiles.module import TileModule
from torch import Tensor

from ..device_configs import WriterSpec
from ..errors import ConfigError
from ..knobs import device_tree
from . import pulses


class WriterTile(AnalogTile):
    """aihwkit's `AnalogTile` whose update applies the writer of its rpu_config (see the module docstring).

    Any rpu_config of a pulsed tile works; without a `writer` field it is the default writer (aihwkit's
    stochastic trains, pulses counted where observable). `counter` is None where the pulses are not
    observable on the CPU (aihwkit's own training algorithms fire them inside its C++).
    """

    supports_indexed = False  # convolutions unfold their input, so every update goes through `update`

    def __init__(self, out_size: int, in_size: int, rpu_config: Any, bias: bool = False,
                 in_trans: bool = False, out_trans: bool = False) -> None:
        writer = getattr(rpu_config, "writer", None) or WriterSpec()
        if writer.policy == "exact":
            rpu_config = copy.deepcopy(rpu_config)
            rpu_config.update = copy.deepcopy(pulses.SINGLE_PULSE)
        super().__init__(out_size, in_size, rpu_config, bias, in_trans, out_trans)
        device = self.rpu_config.device
        self.writer = writer
        self.baseline = getattr(rpu_config, "baseline", None)
        self.algorithm = pulses.own_algorithm(device)
        if self.algorithm and writer.policy == "exact":
            raise ConfigError(f"writer.policy 'exact': {self.algorithm} updates by its own algorithm (aihwkit's "
                              "stochastic trains into its accumulator); use writer.policy 'stochastic'")
        if self.baseline is not None and not pulses.has_pairs(device):
            raise ConfigError(f"baseline: {type(device).__name__} has no differential pairs")
        self.eps = pulses.granularity(self, device)
        pulse_type = self.rpu_config.update.pulse_type
        fp = self.eps is None or pulse_type in (PulseType.NONE, PulseType.NONE_WITH_DEVICE)
        if not fp and pulse_type not in pulses.STOCHASTIC:
            raise ConfigError(f"update.pulse_type {pulse_type.name}: pulses can be counted for "
                              "STOCHASTIC(_COMPRESSED) updates; for exact counts use writer.policy 'exact'")
        if fp and writer.policy == "exact":
            raise ConfigError(f"writer.policy 'exact': {type(device).__name__} takes no pulses")
        self.step = writer.step or self.eps
        self.counter = None if fp or self.algorithm else pulses.PulseCounter(
            self, pulses.has_pairs(device), pulses.devices_per_pulse(device))
        # a vector cell whose pairs refresh: aihwkit 1.2.0 leaves its visible weights stale after a refresh
        self.resync = pulses.stale_after_refresh(device)
        self.drifts = any(getattr(getattr(d, "drift", None), "nu", 0) > 0 for d in device_tree(self.rpu_config))
        self.rounding: torch.Generator | None = None  # the exact writer's random rounding (None: torch's)
        shape = (self.tile.get_d_size(), self.tile.get_x_size())
        self.register_buffer("residual", torch.zeros(shape))  # carried remainder of the exact writer, in pulses
        self.register_buffer("pulses_up", torch.zeros(shape, dtype=torch.float64))  # pulses that raised W
        self.register_buffer("pulses_down", torch.zeros(shape, dtype=torch.float64))

    # ------------------------------------------------------------------ weights

    @torch.no_grad()
    def set_weights(self, weight: Tensor, bias: Tensor | None = None, **kwargs: Any) -> None:
        """aihwkit's set_weights, then the baseline conductance; the carried remainder restarts."""
        super().set_weights(weight, bias, **kwargs)
        if getattr(self, "baseline", None) is not None:
            set_baseline(self, self.baseline)
        if hasattr(self, "residual"):
            self.residual.zero_()

    # ------------------------------------------------------------------ update

    @torch.no_grad()
    def update(self, x_input: Tensor, d_input: Tensor) -> None:
        """W -= lr·Σ d xᵀ through aihwkit's pre_update, as pulses chosen by the writer (lr: the tile's)."""
        x, d = self.pre_update(x_input, 0 if self.in_trans else x_input.dim() - 1,
                               d_input, 0 if self.out_trans else d_input.dim() - 1)
        x = (x.reshape(x.shape[0], -1).T if self.in_trans else x.reshape(-1, x.shape[-1])).float()
        d = (d.reshape(d.shape[0], -1).T if self.out_trans else d.reshape(-1, d.shape[-1])).float()
        if self.analog_bias:
            x = torch.cat([x, torch.ones(len(x), 1)], 1)
        if self.writer.policy == "exact":
            self._write_exact(x, d)
        else:
            self._write_stochastic(x, d)
        if self.resync:
            self.resync_visible()

    def update_indexed(self, x_input: Tensor, d_input: Tensor) -> None:
        raise NotImplementedError("WriterTile updates unfolded inputs only (supports_indexed is False)")

    def _write_stochastic(self, x: Tensor, d: Tensor) -> None:
        """aihwkit's trains; the learning rate rescales aihwkit's ε to the calibrated step."""
        lr = self.tile.get_learning_rate()
        tile_lr = lr * self.eps / self.step if self.counter is not None else lr
        self.tile.set_learning_rate(tile_lr)
        self.tile.update(x, d, False, False, False, self.non_blocking)
        self.tile.set_learning_rate(lr)
        if self.counter is not None:
            self.counter.add_trains(*pulses.pulse_trains(x, d, tile_lr, self.eps, self.rpu_config.update))

    def _write_exact(self, x: Tensor, d: Tensor) -> None:
        """Round -lr·Σ d xᵀ/step to pulse counts digitally and fire each pulse on its own."""
        target = (-self.tile.get_learning_rate() * (d.T @ x)) / self.step
        if self.writer.rounding == "carry":
            target = target + self.residual
            n = torch.trunc(target)
        else:
            n = torch.floor(target + torch.rand(target.shape, generator=self.rounding))
        n = n.clamp(-self.writer.max_pulses, self.writer.max_pulses)
        if self.writer.rounding == "carry":
            # only the remainder below one pulse is carried: what the per-update clip cut off is dropped, or
            # one exploding update (an exact trace can grow by hundreds in a long sequence) would keep firing
            # max_pulses on its devices for thousands of updates and pin them at a bound
            self.residual.copy_(torch.fmod(target - n, 1.0))
        self._fire(n)

    def _fire(self, n: Tensor) -> None:
        """Exactly n[i, j] pulses on device (i, j) (n > 0 raises W): one single-pulse round per count, each
        an aihwkit update of its own (aihwkit's refresh of the pairs comes once per update call)."""
        cols = torch.nonzero(n.abs().sum(0)).flatten()
        if not len(cols):
            return
        lr = self.tile.get_learning_rate()
        self.tile.set_learning_rate(pulses.SINGLE_PULSE_LR * self.eps)
        x = torch.eye(n.shape[1])[cols]
        sign, size = n.sign().T[cols], n.abs().T[cols]
        for k in range(1, int(size.max()) + 1):
            self.tile.update(x, -(sign * (size >= k)), False, False, False, self.non_blocking)  # d < 0 raises W
        self.tile.set_learning_rate(lr)
        self.counter.add_counts(n.double())

    # ------------------------------------------------------------------ visible weights after a refresh

    def resync_visible(self) -> None:
        """Recompute the visible weights (and each pair's weight) from the devices.

        aihwkit 1.2.0's vector cell hands its sub-cells the visible weights instead of their own in
        `finishUpdateCycle` (rpu_vector_device.cpp), so a pair that refreshes writes its own G+ − G− over every
        visible weight and leaves its pair weight stale (`pulses.stale_after_refresh`); in JSB training most
        writes end in a refresh of some pair. Without drift, aihwkit's drift step is a pure reduction of the
        devices (pairs, then the cell), which recomputes both exactly, for a few µs; with drift it would also
        move the drift clocks, so there the devices' parameters are set back as read (~1 ms for 150 × 88)."""
        if self.drifts:
            self.tile.set_hidden_parameters(self.tile.get_hidden_parameters())
        else:
            self.tile.drift_weights(0.0)

    # ------------------------------------------------------------------ checkpoints

    def __getstate__(self) -> dict:
        """aihwkit's state, with the C++ extra state left out where aihwkit cannot dump it (a vector cell of
        pairs: "Key 0.num_states already exists in state map", rpucuda utility_functions.cpp)."""
        tile = self.tile
        self.tile = _ExtraOrNone(tile)
        try:
            return super().__getstate__()
        finally:
            self.tile = tile

    def __setstate__(self, state: dict) -> None:
        """aihwkit's restore, then the hidden parameters once more: aihwkit sets the weights after them, which
        re-splits every pair's conductances from W (G+ = max(W, 0), G− = max(−W, 0))."""
        hidden = state.get(AnalogTileStateNames.HIDDEN_PARAMETERS)
        super().__setstate__(state)
        # a device with write noise re-draws its weights when its hidden parameters are set (aihwkit's
        # PulsedRPUDevice::setDeviceParameter), so there aihwkit's own restore is left as it is
        if hidden is not None and not any(getattr(d, "write_noise_std", 0) > 0 for d in device_tree(self.rpu_config)):
            self.tile.set_hidden_parameters(torch.as_tensor(hidden))

    def __deepcopy__(self, memo: dict) -> WriterTile:
        """Through the pickle state, then the C++ tile copied whole, so the copy keeps what the state cannot
        carry for a vector cell (its devices' drift clocks, its refresh counter)."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        new.tile = copy.deepcopy(self.tile)
        new._shared_weight_tensor = None
        new._bind_shared_weights()
        new._sync_analog_ctx_weights()
        return new


class _ExtraOrNone:
    """A C++ tile whose dump_extra gives None instead of failing on aihwkit 1.2.0's key clash."""

    def __init__(self, tile: Any) -> None:
        self._tile = tile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tile, name)

    def dump_extra(self) -> dict | None:
        try:
            return self._tile.dump_extra()
        except RuntimeError as exc:
            if "already exists in state map" not in str(exc):
                raise
            return None


def set_baseline(tile: AnalogTile, g0: float) -> None:
    """Raise both devices of every pair by the same amount, g0 or what the fuller device's bound still
    allows, so W is unchanged: pulses start on the flatter part of the curve."""
    hidden = tile.get_hidden_parameters()
    names = [k for k in hidden if k.startswith("hidden_weights_") and k[15:].replace("_", "").isdigit()]
    depth = max(k.count("_") for k in names)
    pairs: dict[str, list[str]] = {}
    for name in (k for k in names if k.count("_") == depth):
        # hidden_weights_{0|1}[_k]: the first index picks the device of pair k (a vector cell's k-th pair)
        pairs.setdefault(name[len("hidden_weights_") + 1:], []).append(name)
    for members in pairs.values():
        room = torch.stack([hidden[n.replace("hidden_weights", "max_bound")] - hidden[n] for n in members]).amin(0)
        raise_by = room.clamp(min=0.0, max=g0)
        for name in members:
            hidden[name] = hidden[name] + raise_by
    tile.set_hidden_parameters(hidden)


# ------------------------------------------------------------------ rpu_configs that carry the writer


@dataclass
class _Recipe:
    """The writer's parameters and the baseline conductance, as fields of an rpu_config."""

    writer: WriterSpec = field(default_factory=WriterSpec)
    # conductance both devices of every differential pair start from (set after every set_weights)
    baseline: float | None = None


@dataclass
class WriterSingleRPUConfig(_Recipe, SingleRPUConfig):
    """aihwkit's SingleRPUConfig on a WriterTile."""

    tile_class: type = WriterTile


@dataclass
class WriterUnitCellRPUConfig(_Recipe, UnitCellRPUConfig):
    """aihwkit's UnitCellRPUConfig on a WriterTile."""

    tile_class: type = WriterTile


@dataclass
class WriterDigitalRankUpdateRPUConfig(_Recipe, DigitalRankUpdateRPUConfig):
    """aihwkit's DigitalRankUpdateRPUConfig on a WriterTile (the writer can only count nothing there)."""

    tile_class: type = WriterTile


WRITER_CONFIGS = {SingleRPUConfig: WriterSingleRPUConfig, UnitCellRPUConfig: WriterUnitCellRPUConfig,
                  DigitalRankUpdateRPUConfig: WriterDigitalRankUpdateRPUConfig}


def with_writer(rpu_config: Any, writer: WriterSpec | None = None, baseline: float | None = None) -> Any:
    """A copy of a pulsed rpu_config (aihwkit's AnalogTile, presets included) as the Writer config of its
    class, carrying `writer` and `baseline`; any other rpu_config (inference, floating point) is copied."""
    base = next((b for b in WRITER_CONFIGS if isinstance(rpu_config, b)), None)
    if base is None or not issubclass(rpu_config.tile_class, AnalogTile):
        return copy.deepcopy(rpu_config)
    values = {f.name: copy.deepcopy(getattr(rpu_config, f.name)) for f in fields(base) if f.name != "tile_class"}
    writer = writer or getattr(rpu_config, "writer", None) or WriterSpec()
    baseline = baseline if baseline is not None else getattr(rpu_config, "baseline", None)
    return WRITER_CONFIGS[base](**values, writer=writer, baseline=baseline)


def without_writer(rpu_config: Any) -> Any:
    """The aihwkit config a Writer config extends (a copy, tile_class aihwkit's own)."""
    base = next(b for b in WRITER_CONFIGS if isinstance(rpu_config, b))
    return base(**{f.name: copy.deepcopy(getattr(rpu_config, f.name)) for f in fields(base) if f.name != "tile_class"})


# ------------------------------------------------------------------ pulses of a model


def tile_pulses(model: torch.nn.Module) -> dict[str, float]:
    """Device pulses every analog tile of `model` has fired, by module name: counted by a WriterTile; 0 on a
    floating-point device or a tile updated in floating point (inference tiles); NaN where they are not
    observable (aihwkit's own training algorithms, or a pulsed tile that is not a WriterTile)."""
    out = {}
    for name, tile in model.named_modules():
        if isinstance(tile, WriterTile):
            out[name] = tile.counter.total() if tile.counter is not None else math.nan if tile.algorithm else 0.0
        elif isinstance(tile, TileModule):
            out[name] = math.nan if isinstance(tile, AnalogTile) else 0.0
    return out


def total_pulses(model: torch.nn.Module) -> float:
    """Device pulses all analog tiles of `model` have fired (NaN if any tile's are not observable)."""
    return sum(tile_pulses(model).values())
