"""Pulse accounting for aihwkit tiles, which count no pulses on CPU.

A tile's pulses are the energy and endurance budget of a run (SPEC §5), so
every trainable tile counts what it receives: exactly where our writer
chooses the counts, and as the expected value where aihwkit draws them
(E[n_ij] = BL·p_i·q_j for stochastic pulse trains, with BL, p and q from
aihwkit's update management, replicated here from
rpucuda/rpu_pulsed_meta_parameter.cpp and sparse_bit_line_maker.cpp).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from aihwkit.simulator.configs import SingleRPUConfig, UnitCellRPUConfig
from aihwkit.simulator.configs.compounds import (
    DigitalRankUpdateCell,
    OneSidedUnitCell,
    TransferCompound,
    UnitCell,
    VectorUnitCell,
)
from aihwkit.simulator.configs.devices import PulsedDevice
from aihwkit.simulator.parameters import PulseType, UpdateParameters, VectorUnitCellUpdatePolicy
from aihwkit.simulator.tiles import AnalogTile
from torch import Tensor

STOCHASTIC = (PulseType.STOCHASTIC_COMPRESSED, PulseType.STOCHASTIC)
# Exactly one pulse per requested coincidence: BL 1, no management, lr = 4·granularity makes the
# firing probability 2·|d|·2·|x| ≥ 1 for |d| = |x| = 1 (notes/aihwkit_api.md §3.3, option 4b).
SINGLE_PULSE = UpdateParameters(pulse_type=PulseType.STOCHASTIC_COMPRESSED, desired_bl=1, fixed_bl=True,
                                update_bl_management=False, update_management=False)
SINGLE_PULSE_LR = 4.0


def granularity(tile, device) -> float | None:
    """Weight change aihwkit assumes per pulse (the ε of its update formula); None for FP devices."""
    try:
        extra = tile.tile.dump_extra()
    except RuntimeError:  # a VectorUnitCell's dump_extra repeats keys (aihwkit 1.2.0); it averages
        return sum(_sub_granularity(sub) for sub in device.unit_cell_devices) / len(device.unit_cell_devices)
    for key in ("rpu.rpu_device.weight_granularity", "rpu.rpu_device.granularity"):
        if key in extra:
            return float(extra[key][0])
    return None


def _sub_granularity(device) -> float:
    single = isinstance(device, PulsedDevice)
    cfg = SingleRPUConfig(device=device) if single else UnitCellRPUConfig(device=device)
    return granularity(AnalogTile(1, 1, cfg), device)


def own_algorithm(device) -> str | None:
    """The aihwkit training algorithm a device runs itself (mixed precision, the Tiki-Taka family), or None.

    Its update goes to a digital accumulator or a hidden fast device, and the pulses that move the
    visible weights are fired by aihwkit's C++ transfer, which counts none on the CPU: such a
    tile's pulses are not observable, only its weights."""
    return type(device).__name__ if isinstance(device, (DigitalRankUpdateCell, TransferCompound)) else None


def has_pairs(device) -> bool:
    """Whether every weight is held by differential pairs, whose devices only ever move one way."""
    if isinstance(device, OneSidedUnitCell):
        return True
    subs = getattr(device, "unit_cell_devices", None)
    return isinstance(device, UnitCell) and bool(subs) and all(has_pairs(s) for s in subs)


@dataclass
class DevicePairs:
    """The hidden_weights_* names of a tile's devices (deepest level), and which two form a pair."""

    devices: list[str]
    pairs: list[tuple[str, str]]


def device_pairs(tile, paired: bool) -> DevicePairs:
    """hidden_weights_{d}[_k]: device d (0: G−, 1: G+) of pair k; a single device has hidden_weights."""
    every = list(tile.get_hidden_parameters())
    names = [k for k in every
             if k == "hidden_weights" or (k.startswith("hidden_weights_") and k[14:].replace("_", "").isdigit())]
    if not names:  # a single device per weight: the tile's own weights, bounded by max/min_bound
        return DevicePairs(["hidden_weights"] if "max_bound" in every else [], [])
    depth = max(k.count("_") for k in names)
    devices = [k for k in names if k.count("_") == depth]
    if not all(f"max_bound{k[14:]}" in every and f"min_bound{k[14:]}" in every for k in devices):
        return DevicePairs([], [])
    groups: dict[str, list[str]] = {}
    for name in devices:
        groups.setdefault(name[len("hidden_weights_") + 1:], []).append(name)
    pairs = [tuple(m) for m in groups.values() if len(m) == 2] if paired else []
    return DevicePairs(devices, pairs)


def stale_after_refresh(device) -> bool:
    """Whether aihwkit leaves the tile's visible weights stale after a refresh: a VectorUnitCell whose
    pairs refresh (OneSidedUnitCell, refresh_every > 0). aihwkit 1.2.0 then copies the refreshed pair's
    own weight into the visible weights of the columns it refreshes (the ones forward and backward
    read) instead of the average of the pairs, until the next full reduction; the devices are right.
    Setting the hidden parameters back recomputes the visible weights from the devices."""
    subs = getattr(device, "unit_cell_devices", None) or []
    return isinstance(device, VectorUnitCell) and any(
        (isinstance(s, OneSidedUnitCell) and s.refresh_every > 0) or stale_after_refresh(s) for s in subs)


def devices_per_pulse(device) -> int:
    """Devices a coincidence reaches: every pair of a VectorUnitCell updated with policy ALL."""
    if isinstance(device, VectorUnitCell) and device.update_policy == VectorUnitCellUpdatePolicy.ALL:
        return sum(devices_per_pulse(s) for s in device.unit_cell_devices)
    return 1


def pulse_trains(x: Tensor, d: Tensor, lr: float, eps: float, up: UpdateParameters
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """BL [N], signed firing probabilities p [N, out] and q [N, in] of aihwkit's stochastic update(x, d).

    Sample b fires BL_b slots; row i fires with probability p_bi and column j
    with q_bj, so the expected coincidences are Σ_b BL_b p_bi q_bj.
    """
    x, d = x.reshape(-1, x.shape[-1]).float(), d.reshape(-1, d.shape[-1]).float()
    xa, da = x.abs().amax(1), d.abs().amax(1)
    desired = float(up.desired_bl)
    if up.fixed_bl or up.update_bl_management or eps * desired >= lr:
        bl = torch.full_like(xa, desired)
        a = torch.full_like(xa, math.sqrt(lr / (eps * desired)))
    else:
        bl = torch.full_like(xa, max(math.ceil(lr / eps), 1))
        a = torch.ones_like(xa)
    b = a.clone()
    if up.update_management or up.update_bl_management:
        dval = up.um_grad_scale * da
        k = lr * xa * dval / eps
        if up.update_bl_management:
            bl = torch.ceil(k).clamp(max=desired)
            a = b = torch.sqrt(lr / (eps * bl))
        dval = torch.where(k > desired, dval * desired / k, dval)
        a, b = a * torch.sqrt(xa / dval), b * torch.sqrt(dval / xa)
    live = (xa > 0) & (da > 0)
    bl = torch.where(live, bl, torch.zeros_like(bl))
    p = _probability(d, torch.where(live, a, torch.zeros_like(a)), up.res)
    q = _probability(x, torch.where(live, b, torch.zeros_like(b)), up.res)
    return bl, p, q


def _probability(v: Tensor, scale: Tensor, res: float) -> Tensor:
    pp = v.abs() * scale[:, None]
    if res > 0:
        pp = torch.round(pp / res) * res
    return pp.clamp(max=1.0) * v.sign()


class PulseCounter:
    """Cumulative pulses per cross-point, split by direction (which device of a pair they reach).

    The counts are the tile's registered buffers `pulses_up` and `pulses_down` ([out, in], float64), so they
    travel with its state_dict, deepcopy and pickle; this class reads and adds to them."""

    def __init__(self, tile: Any, pairs: bool, fan: int) -> None:
        self.tile, self.pairs, self.fan = tile, pairs, fan

    @property
    def up(self) -> Tensor:
        """Pulses that raised W, per cross-point."""
        return self.tile.pulses_up

    @property
    def down(self) -> Tensor:
        """Pulses that lowered W, per cross-point."""
        return self.tile.pulses_down

    def add_counts(self, n: Tensor) -> None:
        """Exact signed counts [out, in]; n > 0 raises W."""
        self.up.add_(n.clamp(min=0))
        self.down.add_((-n).clamp(min=0))

    def add_trains(self, bl: Tensor, p: Tensor, q: Tensor) -> None:
        """Expected coincidences of stochastic trains; update(x, d) lowers W where d·x > 0."""
        w = bl[:, None] * p
        w_neg, w_pos = (-w).clamp(min=0), w.clamp(min=0)  # rows with d < 0 raise W where x > 0
        q_pos = q.clamp(min=0)
        self.up.add_((w_neg.T @ q_pos).double())
        self.down.add_((w_pos.T @ q_pos).double())
        if bool((q < 0).any()):
            q_neg = (-q).clamp(min=0)
            self.up.add_((w_pos.T @ q_neg).double())
            self.down.add_((w_neg.T @ q_neg).double())

    def total(self) -> float:
        """Device pulses so far (a pulse reaches `fan` devices)."""
        return float((self.up + self.down).sum()) * self.fan

    def metrics(self, prefix: str) -> dict[str, float]:
        """Device pulses so far, and the most any one device received (its endurance budget)."""
        total = self.total()
        per_device = torch.maximum(self.up, self.down) if self.pairs else self.up + self.down
        return {prefix: total, f"{prefix}_max_device": float(per_device.max())}
