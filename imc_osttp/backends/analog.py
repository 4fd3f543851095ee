"""Analog backend: every W_l, H_l and the readout's W{L+1} on trainable aihwkit tiles, the
stacked feedback [B_1 … B_L] on one programmed tile (SPEC §5, §6).

Matrix products run through the tiles (with their IO non-idealities); updates
reach the devices only as pulses and every trainable tile counts them.
Thresholds and biases stay digital torch parameters, as on the hardware.
Rank-1 updates (factorised traces, the readout) are kept as factor pairs
and sent as one batched `tile.update`, the crossbar's parallel update; a
dense update matrix goes through the pulse writer of the device config.
The trainable tiles are `WriterTile`s (backends/tile.py), the tile class an
aihwkit model gets from `device_configs.load`: one writer for both.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import device_configs
from ..config import OptimConfig, RunConfig
from ..device_configs import DeviceSpec, WriterSpec
from ..errors import ConfigError
from ..knobs import apply_to_spec
from ..layers import matrix_slots
from ..optim import base_lr, clip_coefficient, group_lrs, make_optimizer
from ..seeds import generator, tile_seeds
from .base import Accumulator

try:
    from aihwkit.simulator.tiles.inference import InferenceTileWithPeriphery
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("the analog backend needs aihwkit 1.2.0: run scripts/setup.sh") from exc

from . import pulses
from .drift import ConductanceDrift
from .tile import WriterTile, with_writer


@dataclass
class Factors:
    """How a gradient estimate was built: dense + Σ_b left_bᵀ right_b, kept for the crossbar."""

    left: Tensor  # [N, m]
    right: Tensor  # [N, n]
    dense: Tensor | None = None  # [m, n]

    def to_dense(self) -> Tensor:
        outer = self.left.transpose(0, 1) @ self.right
        return outer if self.dense is None else outer + self.dense


class AnalogAccumulator(Accumulator):
    """Also keeps the rank-1 terms of the named parameters as factors.

    `take` still returns every estimate as a dense tensor (for any consumer);
    a factored one carries its `Factors` as the attribute `factors`, from which
    the analog backend sends the rank-1 terms as one batched tile update.
    """

    def __init__(self, shapes: dict[str, torch.Size], like: Tensor, factored: set[str]) -> None:
        super().__init__(shapes, like)
        self.factors: dict[str, tuple[list[Tensor], list[Tensor]]] = {n: ([], []) for n in factored}
        self.dense_used: set[str] = set()

    def add(self, name: str, value: Tensor) -> None:
        self.dense_used.add(name)
        super().add(name, value)

    def add_eligibility(self, name: str, trace: Tensor, signal: Tensor) -> None:
        self.dense_used.add(name)
        super().add_eligibility(name, trace, signal)

    def add_outer(self, name: str, left: Tensor, right: Tensor, crossbar: bool = True) -> None:
        if name not in self.factors or not crossbar:
            self.dense_used.add(name)
            super().add_outer(name, left, right)
            return
        lefts, rights = self.factors[name]
        lefts.append(left.detach())  # kept, not copied: see Accumulator.add_outer
        rights.append(right.detach())

    def take(self, scale: float) -> dict[str, Tensor]:
        out = super().take(scale)
        for name, (lefts, rights) in self.factors.items():
            if lefts:
                factors = Factors(torch.cat(lefts), torch.cat(rights) * scale,
                                  out[name] if name in self.dense_used else None)
                out[name] = factors.to_dense()
                out[name].factors = factors
            lefts.clear()
            rights.clear()
        self.dense_used.clear()
        return out


class PulsedTile:
    """One trainable matrix (row convention [in, out]) on a `WriterTile` holding its transpose, the very tile
    an aihwkit model builds from `device_configs.load`; this class adds the backend's per-epoch diagnostics."""

    def __init__(self, weight: Tensor, spec: DeviceSpec, rounding: torch.Generator, seed: int) -> None:
        rpu = with_writer(spec.rpu_config, spec.writer, spec.baseline)
        if not issubclass(rpu.tile_class, WriterTile):
            raise ConfigError(f"device config: {type(spec.rpu_config).__name__} is not a pulsed training "
                              "configuration (a trainable matrix needs an AnalogTile's rpu_config)")
        if hasattr(rpu.device, "construction_seed"):
            rpu.device.construction_seed = seed  # device-to-device variation follows the run's seed
        in_size, out_size = weight.shape
        self.tile = rpu.tile_class(out_size, in_size, rpu)
        self.tile.rounding = rounding
        self.tile.set_weights(weight.detach().transpose(0, 1).float().contiguous())
        # diagnostics: the weights the writer meant to reach (tile convention, re-anchored to the read-back
        # weights every epoch) and the device conductances when the epoch began (refresh shows as a drop)
        self.intended = self.tile.get_weights()[0].clone()
        inner = getattr(rpu.device, "device", None)  # mixed precision: the pulsed cell under the accumulator
        self.pairs = pulses.device_pairs(self.tile, pulses.has_pairs(rpu.device) or pulses.has_pairs(inner))
        self.conductances = self._conductances()

    @property
    def writer(self) -> WriterSpec:
        return self.tile.writer

    @property
    def algorithm(self) -> str | None:
        return self.tile.algorithm

    @property
    def step(self) -> float | None:
        return self.tile.step

    @property
    def counter(self) -> pulses.PulseCounter | None:
        return self.tile.counter

    @property
    def residual(self) -> Tensor:
        """The exact writer's carried remainder, in pulses (tile convention [out, in])."""
        return self.tile.residual

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.tile.forward(x.float()).to(x.dtype)

    def backward(self, d: Tensor) -> Tensor:
        with torch.no_grad():
            return self.tile.backward(d.float()).to(d.dtype)

    def weight(self) -> Tensor:
        """The logical weights in row convention (an exact copy, not a realistic read)."""
        return self.tile.get_weights()[0].transpose(0, 1)

    def write(self, grad: Tensor, lr: float) -> None:
        """ΔW = -lr·grad through the tile's update (aihwkit's tile.update(x, d): W_t -= lr Σ d xᵀ):
        rank-1 terms as they are where the gradient has them and the writer takes them (stochastic trains),
        a dense matrix as one one-hot input row per row of W that changes."""
        factors = getattr(grad, "factors", None)
        self.intended -= lr * grad.detach().transpose(0, 1).float()
        self.tile.set_learning_rate(lr)
        if factors is None or self.writer.policy == "exact":
            self._write_dense(grad)
        else:
            self.tile.update(factors.left.float(), factors.right.float())
            if factors.dense is not None:
                self._write_dense(factors.dense)

    def _write_dense(self, grad: Tensor) -> None:
        rows = torch.nonzero(grad.detach().abs().sum(1)).flatten()
        if len(rows):
            self.tile.update(torch.eye(grad.shape[0])[rows], grad.detach()[rows].float())

    def _conductances(self) -> dict[str, Tensor]:
        """Every device's conductance, with its bounds: hidden_weights_*, max_bound_*, min_bound_*."""
        hidden = self.tile.get_hidden_parameters()
        if self.pairs.devices == ["hidden_weights"]:  # a single device: its conductance is the raw weight
            hidden["hidden_weights"] = self.tile.tile.get_weights()
        return {k: hidden[k].clone() for k in self.pairs.devices} | {
            f"{b}{k[len('hidden_weights'):]}": hidden[f"{b}{k[len('hidden_weights'):]}"]
            for k in self.pairs.devices for b in ("max_bound", "min_bound")}

    def diagnostics(self) -> dict[str, float]:
        """Once per epoch: how far the read-back weights are from the intended ones (the write error
        accumulated over the epoch, then re-anchored), devices at their bounds, pairs refreshed, carry.

        gap_mean/gap_max: |W_intended − W_read| in weight units, W_intended = W at the epoch's start
        − Σ lr·grad of its writes. w_max_g: max |W|/α, the largest weight in conductance units.
        bound_hi/bound_lo: fraction of devices within 10 % of their range from their max/min bound (a PCM
        device's noise keeps it hovering at 60-100 % of its range once driven to saturation).
        refreshed: pairs whose two devices both fell by more than 20 % of their range since the epoch
        began: aihwkit's refresh (reset both, rewrite the difference) is not counted on the CPU, and a
        pulsed PCM device only rises otherwise, so this is the number of refreshes, less any pair
        refreshed twice in an epoch. carry_mean/carry_max: |residual| of the exact writer, in pulses."""
        w = self.tile.get_weights()[0]
        gap = (self.intended - w).abs()
        out = {"gap_mean": float(gap.mean()), "gap_max": float(gap.max()),
               "w_max_g": float((w / self._scale().view(-1, 1)).abs().max())}
        self.intended = w.clone()
        if self.pairs.devices:
            now = self._conductances()
            hi = lo = 0.0
            for k in self.pairs.devices:
                suffix = k[len("hidden_weights"):]
                g, top, bottom = now[k], now[f"max_bound{suffix}"], now[f"min_bound{suffix}"]
                margin = 0.1 * (top - bottom)
                hi += float((g >= top - margin).float().mean())
                lo += float((g <= bottom + margin).float().mean())
            out["bound_hi"] = hi / len(self.pairs.devices)
            out["bound_lo"] = lo / len(self.pairs.devices)
            if self.pairs.pairs:
                refreshed = 0
                for a, b in self.pairs.pairs:
                    drop = [self.conductances[k] - now[k] for k in (a, b)]
                    span = [now[f"max_bound{k[len('hidden_weights'):]}"] - now[f"min_bound{k[len('hidden_weights'):]}"]
                            for k in (a, b)]
                    refreshed += int(((drop[0] > 0.2 * span[0]) & (drop[1] > 0.2 * span[1])).sum())
                out["refreshed"] = float(refreshed)
            self.conductances = now
        if self.writer.policy == "exact" and self.writer.rounding == "carry":
            out["carry_mean"] = float(self.residual.abs().mean())
            out["carry_max"] = float(self.residual.abs().max())
        return out

    def _scale(self) -> Tensor:
        """Digital output scale α (per output or global): W = α·G, so pulses see d/α."""
        alpha = self.tile.get_mapping_scales()
        scale = torch.ones(1) if alpha is None else alpha.detach().float()
        return scale * float(getattr(self.tile, "mapping_lr_scale", 1.0))



def mapping_scales(tile) -> Tensor | None:
    """A copy of an aihwkit tile's digital output scales (aihwkit hands out its own tensor)."""
    scales = tile.get_mapping_scales()
    return None if scales is None else scales.clone()


class ProgrammedTile:
    """The fixed feedback matrix: written once with programming noise (and drift), then only read."""

    def __init__(self, weight: Tensor, spec: DeviceSpec) -> None:
        rpu = copy.deepcopy(spec.rpu_config)
        in_size, out_size = weight.shape
        self.tile = rpu.tile_class(out_size, in_size, rpu)
        self.tile.set_weights(weight.detach().transpose(0, 1).float().contiguous())
        if isinstance(self.tile, InferenceTileWithPeriphery):
            self.tile.program_weights()
        self.age = spec.program.drift_time  # chip seconds since programming
        self.follow_clock = spec.program.follow_clock
        if self.age > 0:
            self.tile.drift_weights(self.age)
        self.tile.eval()

    def advance_clock(self, seconds: float) -> None:
        """Age the array by `seconds` of chip time if it follows the clock (its noise model's drift)."""
        if self.follow_clock and seconds > 0:
            self.age += seconds
            self.tile.drift_weights(self.age)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.tile.forward(x.float()).to(x.dtype)

    def weight(self) -> Tensor:
        return self.tile.get_weights()[0].transpose(0, 1)


def conductance_drift(tile, spec: DeviceSpec) -> ConductanceDrift | None:
    """The device config's ν(G) model on one trainable tile, in the units of its devices' conductance range;
    None where the devices do not drift (knob drift_nu 0: aihwkit then runs no drift clock)."""
    from ..knobs import drift_parameters, pulsed_devices

    drifts = drift_parameters(spec.rpu_config)
    if not any(d.nu > 0 for d in drifts):
        return None
    g_max = max(d.w_max for d in pulsed_devices(spec.rpu_config))
    return ConductanceDrift(tile, spec.drift, g_max, drifts[0].reset_tol)


def check_optimizer(cfg: OptimConfig) -> None:
    """Pulses implement plain SGD: ΔW = -lr·grad, nothing stateful per weight."""
    if cfg.name != "sgd" or cfg.momentum:
        raise ConfigError(f"optim: analog tiles are updated by plain SGD pulses; got {cfg.name} with "
                          f"momentum {cfg.momentum} (use optim.name=sgd, optim.momentum=0)")


class AnalogBackend:
    """Every matrix (W_l, H_l, W{L+1}) on its own pulsed tile, thresholds and the readout bias digital.

    The feedback matrices B_l [k, n_l] are one programmed tile [k, Σ n_l], the paper's second
    chip: a single forward pass of y*^t gives every layer's learning signal at once, so no layer
    waits for another, and every layer's B_l carries the same programming noise model."""

    kind = "analog"
    products_are_reads = False
    # 2: the visible weights of a refreshing cell are re-derived after every write (issue 10); 1: before
    results_version = "analog2"
    has_clock = True

    @classmethod
    def validate(cls, cfg: RunConfig) -> None:
        """Plain SGD on the CPU, and device configs that exist and take the config's knobs."""
        check_optimizer(cfg.optim)
        if cfg.train.device.split(":")[0] != "cpu":
            raise ConfigError("train.device: the analog backend runs on the CPU (aihwkit's CPU build)")
        for role, name in (("device", cfg.backend.device_config), ("feedback", cfg.backend.feedback_config)):
            apply_to_spec(device_configs.load_spec(name), cfg.backend.knobs, role)

    @staticmethod
    def run_tags(cfg: RunConfig) -> dict[str, str]:
        return {"backend": "analog", "device_config": cfg.backend.device_config}

    def __init__(self, cfg: RunConfig, params: dict[str, Tensor], feedback: Tensor,
                 trainable: list[str]) -> None:
        check_optimizer(cfg.optim)
        knobs = cfg.backend.knobs
        spec = apply_to_spec(device_configs.load_spec(cfg.backend.device_config), knobs, "device")
        feedback_spec = apply_to_spec(device_configs.load_spec(cfg.backend.feedback_config), knobs, "feedback")
        rounding = generator(cfg.seed, "rounding")
        self.dtype = params["W1"].dtype
        # aihwkit draws device-to-device variation from construction_seed (imc_osttp/seeds.py); every
        # trainable tile is built from the same knob-applied spec, so a sweep knob reaches all
        slots = matrix_slots(cfg.model.depth)
        seeds = dict(zip(slots, tile_seeds(cfg.seed, len(slots)), strict=True))
        self.tiles = {n: PulsedTile(params[n], spec, rounding, seed=seeds[n]) for n in slots if n in params}
        unobserved = sorted({t.algorithm for t in self.tiles.values() if t.algorithm})
        if unobserved:
            warnings.warn(f"{', '.join(unobserved)} runs aihwkit's own training algorithm: its transfer pulses "
                          "are fired inside aihwkit and not observable on the CPU, so no pulses/* metrics",
                          stacklevel=2)
        self.digital = {n: torch.nn.Parameter(v.clone(), requires_grad=n in trainable)
                        for n, v in params.items() if n not in self.tiles}
        self.trainable = list(trainable)
        self.time_per_update = cfg.backend.time_per_update
        self.B = ProgrammedTile(feedback, feedback_spec)
        # a measured chip's ν(G) (device config `drift`): each tile's ν per device, redrawn at every restart
        models = {n: conductance_drift(t.tile, spec) for n, t in self.tiles.items()} if spec.drift else {}
        self.drift_models = {n: m for n, m in models.items() if m is not None}
        self.grad_clip = cfg.optim.grad_clip
        # the optimizer steps the digital parameters; a tile's group holds an empty placeholder
        # (never given a gradient) that carries the tile's scaled, scheduled learning rate
        self.optimizer, self.scheduler = make_optimizer(
            {n: self.digital[n] if n in self.digital else torch.nn.Parameter(torch.zeros(0)) for n in self.trainable},
            cfg.optim)
        self._views: dict[str, Tensor] = {}
        self._gdc: Any = None  # aihwkit's GlobalDriftCompensation, once started
        self._gdc_ref: dict[str, Tensor] = {}
        self._gdc_factor: dict[str, Tensor] = {}
        self._gdc_scales: dict[str, Tensor | None] = {}

    def mvm(self, name: str, x: Tensor) -> Tensor:
        out = self.tiles[name].forward(x)
        if torch.is_grad_enabled():
            # BPTT: the value comes from the tile, the gradient from the weights it holds
            linear = x @ self.parameters()[name]
            out = out + (linear - linear.detach())
        return out

    def mvm_t(self, name: str, d: Tensor) -> Tensor:
        return self.tiles[name].backward(d)

    def feedback(self, target: Tensor) -> Tensor:
        return self.B.forward(target)

    def feedback_matrix(self) -> Tensor:
        return self.B.weight().to(self.dtype)

    def read(self, name: str) -> Tensor:
        return self.digital[name] if name in self.digital else self.parameters()[name].detach()

    def parameters(self) -> dict[str, Tensor]:
        """Tile weights (cached until the next update) and the digital parameters."""
        if not self._views:
            self._views = {n: t.weight().to(self.dtype).requires_grad_(n in self.trainable)
                           for n, t in self.tiles.items()}
        return {**self._views, **self.digital}

    def accumulator(self) -> Accumulator:
        factored = {n for n in self.trainable
                    if n in self.tiles and self.tiles[n].writer.policy == "stochastic"}
        shapes = {n: self.parameters()[n].shape for n in self.trainable}
        return AnalogAccumulator(shapes, torch.empty(0, dtype=self.dtype), factored)

    def apply(self, grads: dict[str, Tensor]) -> None:
        names = [n for n in self.trainable if n in grads]
        coef = clip_coefficient([grads[n] for n in names], self.grad_clip)
        lrs = group_lrs(self.optimizer)
        steppable = [n for n in names if n in self.digital]
        for name in steppable:
            self.digital[name].grad = grads[name].detach().to(self.dtype) * coef
        if steppable:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        for name in names:
            if name in self.tiles:
                self.tiles[name].write(grads[name], lrs[name] * coef)
        if self.time_per_update:
            self.advance_clock(self.time_per_update)
        self._views = {}

    def advance_clock(self, seconds: float) -> None:
        """Let `seconds` of chip time pass: every trainable device drifts by aihwkit's power law
        W = W_w·max(t/t_0, 1)^(−ν), t counted from the device's last write (aihwkit restarts a device's
        clock at the first drift step after a write that changed it by more than drift.reset_tol)."""
        for name, tile in self.tiles.items():
            model = self.drift_models.get(name)
            if model is not None:
                model.before(tile.tile)
            tile.tile.drift_weights(seconds)
            if model is not None:
                model.after(tile.tile)
        self.B.advance_clock(seconds)
        self.forget_views()

    def copy(self) -> AnalogBackend:
        """An independent copy of the trained chip: every trainable tile's devices, drift clocks, carried
        remainder and pulse counters (`WriterTile` deep-copies its C++ tile whole). The programmed B's aihwkit
        tile is read-only and shared; where it ages with the clock, each copy keeps its own age and drifts the
        shared tile to that age when its clock advances."""
        return copy.deepcopy(self, {id(self.B.tile): self.B.tile})

    def pulse_total(self) -> float:
        counters = [t.counter for t in self.tiles.values()]
        return math.nan if any(c is None for c in counters) else sum(c.total() for c in counters)

    def start_drift_compensation(self, per_column: bool = False) -> None:
        """aihwkit's GlobalDriftCompensation per trainable tile (or its PerColumnDriftCompensation, one factor
        per output column): the mean |output| of its one-hot read-out now, right after the last write, is the
        reference that later read-outs are scaled back to."""
        from aihwkit.inference.compensation.drift import GlobalDriftCompensation, PerColumnDriftCompensation

        self._gdc = PerColumnDriftCompensation() if per_column else GlobalDriftCompensation()
        # copies: aihwkit hands out its own scale tensor and set_mapping_scales writes a one-element one in
        # place, so a kept reference would follow every compensation and compound it at the next (issue 22)
        self._gdc_scales = {n: mapping_scales(t.tile) for n, t in self.tiles.items()}
        self._gdc_factor = {n: torch.ones(1) for n in self.tiles}
        self._gdc_ref = {n: self._gdc_readout(n) for n in self.tiles}

    def compensate_drift(self) -> dict[str, float]:
        """Each tile's digital output scale times ref/now (the pulse writer divides by the same scale, so
        learning writes stay calibrated); returns the factors (per column: their mean)."""
        for name, pulsed in self.tiles.items():
            self._gdc_factor[name] = self._gdc_ref[name] / self._gdc_readout(name).clamp(min=1e-12)
            base, factor = self._gdc_scales[name], self._gdc_factor[name]
            pulsed.tile.set_mapping_scales(factor.clone() if base is None else base * factor)
        self.forget_views()
        return {name: float(factor.mean()) for name, factor in self._gdc_factor.items()}

    @torch.no_grad()
    def _gdc_readout(self, name: str) -> Tensor:
        """The read-out through the tile with the compensation divided out (the raw conductances)."""
        tile = self.tiles[name].tile
        out = tile.forward(self._gdc.get_readout_tensor(tile.in_size))
        return self._gdc.readout(out).reshape(-1) / self._gdc_factor[name]

    def forget_views(self) -> None:
        """Drop the cached weight views: the tiles changed outside `apply` (drift, output scales)."""
        self._views = {}

    def end_epoch(self) -> dict[str, float]:
        """Step the schedule; lr and each trainable tile's pulses since the run began."""
        if self.scheduler is not None:
            self.scheduler.step()
        metrics = {"lr": base_lr(self.optimizer)}
        for name in self.trainable:
            tile = self.tiles.get(name)
            if tile is not None and tile.counter is not None:
                metrics.update(tile.counter.metrics(f"pulses/{name}"))
            if tile is not None:
                # "tile/…" sorts after the NLL curves in the MLflow UI ("diag/…" would come first)
                metrics.update({f"tile/{name}/{k}": v for k, v in tile.diagnostics().items()})
        return metrics
