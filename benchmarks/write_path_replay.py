"""Replay the same writes on a noise-free 4-device PCM tile and save what reached the devices.

Run it under two checkouts (e.g. before and after a change to the write path) and compare the two
files: pulse counts, weights and every hidden parameter must be equal bit for bit. The cell is
pcm_4device (weight scaling, exact writer with carry, refresh after every write) with every random
part off, since aihwkit's CPU noise cannot be seeded: no cycle-to-cycle or reset noise, exact refresh
reads, a deterministic refresh write. 300 writes of a sparse random gradient at JSB's learning rate
drive many devices high enough to refresh.

    PYTHONPATH=<checkout> .venv/bin/python benchmarks/write_path_replay.py /tmp/a.pt
    .venv/bin/python benchmarks/write_path_replay.py --compare /tmp/a.pt /tmp/b.pt
"""

from __future__ import annotations

import argparse

import torch
from aihwkit.simulator.parameters import IOParameters, PulseType, UpdateParameters

from imc_osttp import device_configs
from imc_osttp.backends.analog import PulsedTile
from imc_osttp.knobs import device_tree


def replay(writes: int = 300) -> dict[str, object]:
    spec = device_configs.load_spec("pcm_4device")
    for cell in spec.rpu_config.device.unit_cell_devices:
        cell.refresh_forward = IOParameters(is_perfect=True)
        cell.refresh_update = UpdateParameters(pulse_type=PulseType.DETERMINISTIC_IMPLICIT, desired_bl=31)
    for device in device_tree(spec.rpu_config):
        for name in ("dw_min_std", "dw_min_std_add", "dw_min_std_slope", "reset_std", "write_noise_std"):
            if hasattr(device, name):
                setattr(device, name, 0.0)
    w = torch.randn(88, 150, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3
    tile = PulsedTile(w, spec, torch.Generator().manual_seed(0), seed=3)
    g = torch.Generator().manual_seed(1)
    for _ in range(writes):
        grad = torch.randn(88, 150, generator=g, dtype=torch.float64) * 20 * (torch.rand(88, 150, generator=g) < 0.2)
        tile.write(grad, 0.001)
    return {"up": tile.counter.up, "down": tile.counter.down, "weights": tile.weight(),
            "hidden": tile.tile.get_hidden_parameters()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args()
    if not args.compare:
        state = replay()
        torch.save(state, args.files[0])
        print(f"{float((state['up'] + state['down']).sum()):.0f} pulses written to {args.files[0]}")
        return
    a, b = (torch.load(f, weights_only=False) for f in args.files)
    same = {"pulse counts": torch.equal(a["up"], b["up"]) and torch.equal(a["down"], b["down"]),
            "weights": torch.equal(a["weights"], b["weights"]),
            "hidden parameters": all(torch.equal(a["hidden"][k], b["hidden"][k]) for k in a["hidden"])}
    for what, equal in same.items():
        print(f"{what}: {'identical' if equal else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
