"""A measured chip's conductance-dependent drift on aihwkit's pulsed devices.

aihwkit's pulsed devices drift by G_w·(Δt/t0)^(−ν) with one ν per device, drawn once
(ν + ν_dtod·ν·ξ) and independent of the conductance. PCM's ν depends on the programmed state:
on the HERMES chip about 0.017 near Gmax, 0.056 at mid range, 0.07–0.13 at low G
(aihwkit's `HermesNoiseModel`, fitted on that chip). `ConductanceDrift` keeps aihwkit's drift
(its clock, its restart after a write, its power law) and only sets each device's ν: whenever
a write restarts a device's clock, a new ν is drawn from the chip's distribution at the
device's new conductance, by aihwkit's own `generate_drift_coefficients`.
"""

from __future__ import annotations

import torch

from ..device_configs import DriftModelSpec
from ..errors import ConfigError

NU, G = "drift_nu", "hidden_weights"


class ConductanceDrift:
    """Per-device ν from a ν(G) model, redrawn for the devices whose drift clock a write restarted.

    Call `before` right before the tile's `drift_weights` and `after` right after it: the devices
    that moved since the last `after` (by more than aihwkit's `reset_tol`, its own criterion for a
    restart) get a new ν at their present conductance; on the first call every device does."""

    def __init__(self, tile, spec: DriftModelSpec, device_g_max: float, reset_tol: float) -> None:
        from aihwkit.inference import HermesNoiseModel

        names = list(tile.tile.get_hidden_parameter_names())
        self.nu_rows = [i for i, n in enumerate(names) if n.startswith(NU)]
        if not self.nu_rows:
            raise ConfigError("drift.model: the trainable device has no drift (set drift_nu > 0 on its devices)")
        conductances = [G + names[i][len(NU):] for i in self.nu_rows]
        if not set(conductances) <= set(names):
            raise ConfigError("drift.model: needs the devices of a unit cell (each with its own hidden_weights); "
                              "a single-device tile keeps its conductance in the weights")
        self.g_rows = [names.index(n) for n in conductances]
        self.model = HermesNoiseModel(num_devices=spec.num_devices)
        self.to_model = self.model.g_max / (spec.g_max or device_g_max)  # device units -> the model's µS
        self.reset_tol = reset_tol
        self.last: torch.Tensor | None = None

    def before(self, tile) -> None:
        """Draw ν for every device whose clock the coming drift step restarts."""
        hidden = tile.tile.get_hidden_parameters()
        g = hidden[self.g_rows]
        moved = torch.ones_like(g, dtype=torch.bool) if self.last is None else (g - self.last).abs() > self.reset_tol
        if not bool(moved.any()):
            return
        nu = hidden[self.nu_rows]
        nu[moved] = self.model.generate_drift_coefficients(g[moved] * self.to_model).to(nu.dtype)
        hidden[self.nu_rows] = nu
        tile.tile.set_hidden_parameters(hidden)

    def after(self, tile) -> None:
        """Remember the conductances the drift step left: a later difference is a write."""
        self.last = tile.tile.get_hidden_parameters()[self.g_rows]
