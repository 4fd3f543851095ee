"""Why frozen_gdc was not monotonic in log time (issue 22, item 3): controlled experiments on one trained chip.

Trains one seed of a deploy file (or loads the chip from --chip, saved there after training), then lets
copies of it drift frozen to each time of --times and evaluates the test split with:

- `gdc_old`: the compensation as it was (its base scale was aihwkit's own one-element tensor, which
  set_mapping_scales overwrites in place, so the factors compounded from the second update on);
- `gdc`: the compensation as it is (aihwkit's GlobalDriftCompensation, its noisy one-hot read-out);
- `exact`: the factor from the exact weights (mean |W| then against now, no read noise);
- `uniform_nu`: `gdc` on the same chip with every device's ν set to the mean (no device-to-device spread);
- `no_io_noise`: `gdc` on the same devices behind noise-free, unquantised converters.

Also: the largest weight difference between drifting to one year in one step and in the grid's steps, and
the spread of five evaluations at 1 s. Writes results/deploy_gdc_probe.csv (one row per time).

    IMC_OSTTP_DATA=../shared/data .venv/bin/python benchmarks/deploy_gdc_probe.py [--chip /tmp/chip0.pt]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pandas as pd
import torch

from imc_osttp.builder import build_for_task
from imc_osttp.config import RunConfig, build, merge
from imc_osttp.data import load_task
from imc_osttp.deploy import copy_chip
from imc_osttp.pipeline.spec import load_spec
from imc_osttp.training import evaluate, train

TIMES = [1.0, 60.0, 3600.0, 86400.0, 604800.0, 2592000.0, 31536000.0]


def save_chip(net, path: Path) -> None:
    """The devices (every hidden parameter), output scales and digital parameters of a trained chip."""
    backend = net.backend
    torch.save({"tiles": {n: {"hidden": t.tile.tile.get_hidden_parameters(), "scales": t.tile.get_mapping_scales()}
                          for n, t in backend.tiles.items()},
                "digital": {n: p.detach().clone() for n, p in backend.digital.items()}}, path)


def load_chip(cfg: RunConfig, data, path: Path):
    """A network built from `cfg` (its IO may differ from the trained one's) holding the saved devices."""
    torch.manual_seed(cfg.seed)  # B's programming noise as in training
    net = build_for_task(cfg, data)
    state = torch.load(path)
    for name, tile in net.backend.tiles.items():
        tile.tile.tile.set_hidden_parameters(state["tiles"][name]["hidden"])
        tile.tile.set_mapping_scales(state["tiles"][name]["scales"].clone())
    with torch.no_grad():
        for name, param in net.backend.digital.items():
            param.copy_(state["digital"][name])
    net.backend.forget_views()
    return net


def nll(net, data) -> float:
    return evaluate(net, data.test, 64, torch.float32, data.kind)["nll"]


def exact_mean_abs(net) -> dict[str, float]:
    return {n: float(t.tile.tile.get_weights().abs().mean()) for n, t in net.backend.tiles.items()}


def frozen_curve(net, data, times: list[float], kind: str) -> tuple[list[float], list[float]]:
    """Test NLL and W2's compensation factor at each time, for one way of compensating."""
    chip = copy_chip(net)
    backend = chip.backend
    backend.start_drift_compensation()
    base = {n: t.tile.get_mapping_scales().clone() for n, t in backend.tiles.items()}
    if kind == "gdc_old":
        backend._gdc_scales = {n: t.tile.get_mapping_scales() for n, t in backend.tiles.items()}  # aihwkit's own
    ref, now, values, factors = exact_mean_abs(chip), 0.0, [], []
    for t in times:
        backend.advance_clock(t - now)
        now = t
        if kind == "exact":
            exact = exact_mean_abs(chip)
            for name, pulsed in backend.tiles.items():
                pulsed.tile.set_mapping_scales(base[name] * (ref[name] / exact[name]))
            backend.forget_views()
            factors.append(ref["W2"] / exact["W2"])
        else:
            factors.append(backend.compensate_drift()["W2"])
        values.append(nll(chip, data))
    return values, factors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploy", default="studies/jsb_deploy.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chip", type=Path, default=None,
                        help="load the trained chip from here (saved there after training)")
    parser.add_argument("--out", type=Path, default=Path("results/deploy_gdc_probe.csv"))
    args = parser.parse_args()
    job = next(j for j in load_spec(args.deploy, job="deploy").jobs() if j.seed == args.seed)
    cfg = job.cfg.model_copy(update={"tracking": RunConfig().tracking.model_copy(update={"enabled": False})})
    data = load_task(cfg.data)
    chip_file = args.chip or Path("/tmp/deploy_gdc_probe_chip.pt")
    if args.chip is None or not args.chip.exists():
        save_chip(train(cfg, data, progress=False).net, chip_file)
    net = load_chip(cfg, data, chip_file)

    table = pd.DataFrame({"time_s": TIMES})
    for kind in ("gdc_old", "gdc", "exact"):
        table[f"nll_{kind}"], table[f"factor_W2_{kind}"] = frozen_curve(net, data, TIMES, kind)
    table["exact_over_gdc_W2"] = table["factor_W2_exact"] / table["factor_W2_gdc"]

    uniform = load_chip(cfg, data, chip_file)  # a fresh chip: aihwkit crashed drifting a copy of an edited copy
    for tile in uniform.backend.tiles.values():
        names, hidden = list(tile.tile.tile.get_hidden_parameter_names()), tile.tile.tile.get_hidden_parameters()
        rows = [i for i, n in enumerate(names) if n.startswith("drift_nu")]
        hidden[rows] = hidden[rows].mean()
        tile.tile.tile.set_hidden_parameters(hidden)
    table["nll_uniform_nu"] = frozen_curve(uniform, data, TIMES, "gdc")[0]
    quiet = build(RunConfig, merge(cfg.model_dump(), {"backend": {"knobs": {
        **cfg.backend.knobs, "out_noise": 0.0, "inp_res": 0, "out_res": 0}}}))
    table["nll_no_io_noise"] = frozen_curve(load_chip(quiet, data, chip_file), data, TIMES, "gdc")[0]

    one, steps = copy_chip(net), copy_chip(net)
    one.backend.advance_clock(TIMES[-1])
    now = 0.0
    for t in TIMES:
        steps.backend.advance_clock(t - now)
        now = t
    table["max_dw_one_vs_grid_steps"] = max(
        float((one.backend.tiles[n].tile.tile.get_weights() - steps.backend.tiles[n].tile.tile.get_weights())
              .abs().max()) for n in one.backend.tiles)
    chip = copy_chip(net)
    chip.backend.advance_clock(1.0)
    table["eval_std_at_1s"] = statistics.stdev([nll(chip, data) for _ in range(5)])
    table.insert(0, "seed", args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
