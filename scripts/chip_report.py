"""Tables of docs/chip.md from the committed CSVs (issue 22): the HERMES hardware-in-the-loop study with its
sensitivity and attribution, the epoch sensitivity from the per-epoch history, and the deploy modes with the
issue's targets checked per seed. Each table is written between `<!-- BEGIN name -->` and `<!-- END name -->`
in docs/chip.md, so the numbers there are always the CSVs' (rerun after a study or deploy changes).

    .venv/bin/python scripts/chip_report.py [--doc docs/chip.md] [--results results]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

PAPER_HW = 11.0  # the paper's hardware-in-the-loop test NLL (± 0.2)
TIMES = {1.0: "1 s", 60.0: "1 min", 3600.0: "1 h", 86400.0: "1 day", 604800.0: "1 week", 2592000.0: "1 month",
         31536000.0: "1 year"}
HIL_ROWS = {  # variant: what it changes from hermes_hil
    "hermes_hil": "the protocol: hermes_pcm (W1, W2), hermes_feedback (B), 1 s per update",
    "hil_time_0.1": "0.1 s of chip time per update",
    "hil_time_10": "10 s of chip time per update",
    "no_drift": "W1/W2 devices do not drift",
    "io_7_9": "7-bit DAC, 9-bit ADC (the reference's) on W1/W2",
    "no_read_noise": "no HERMES read noise on W1/W2",
    "b_reference": "B on the reference's programmed array (feedback_programmed)",
    "no_restart": "assumption: a write never restarts a drift clock",
    "t0_1s": "assumption: drift from 1 s after a write (t0 = 1 s)",
}


def pm(values: pd.Series, digits: int = 3) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    std = values.std(ddof=0) if len(values) > 1 else float("nan")
    return f"{values.mean():.{digits}f} ± {std:.{digits}f}" + ("" if len(values) == 3 else f" (n={len(values)})")


def paired(frame: pd.DataFrame, variant: str, base: str, column: str) -> str:
    """Mean ± std over seeds of variant − base, seed by seed."""
    a = frame[frame["variant"] == variant].set_index("seed")[column]
    b = frame[frame["variant"] == base].set_index("seed")[column]
    diff = (a - b).dropna()
    return "–" if diff.empty else f"{diff.mean():+.3f} ± {diff.std(ddof=0):.3f}"


def hil_table(results: Path) -> str:
    runs = pd.read_csv(results / "jsb_hil.csv")
    ref = pd.read_csv(results / "jsb_analog.csv")
    ref = ref[ref["variant"] == "paper_hw_protocol"]
    lines = ["| variant | what changes | test NLL (best valid) | final-epoch test NLL | Δ final vs hermes_hil "
             "(paired) | device pulses W1 / W2 | s/epoch |", "|---|---|---:|---:|---:|---:|---:|"]
    history = pd.read_csv(results / "jsb_hil_history.csv")
    last = history.sort_values("epoch").groupby(["variant", "seed"]).tail(1)
    for variant, what in HIL_ROWS.items():
        rows = runs[runs["variant"] == variant]
        if rows.empty:
            lines.append(f"| {variant} | {what} | not run yet | | | | |")
            continue
        pulses = last[last["variant"] == variant]
        lines.append(f"| {variant} | {what} | {pm(rows['test_nll'])} | {pm(rows['final_test_nll'])} | "
                     f"{'' if variant == 'hermes_hil' else paired(runs, variant, 'hermes_hil', 'final_test_nll')} | "
                     f"{pulses['pulses/W1'].mean():.2g} / {pulses['pulses/W2'].mean():.2g} | "
                     f"{rows['mean_epoch_time'].mean():.1f} |")
    lines.append(f"| *reference: jsb_analog paper_hw_protocol* | pcm_4device, B feedback_programmed, no clock | "
                 f"{pm(ref['test_nll'])} | {pm(ref['final_test_nll'])} | | | |")
    lines.append(f"| *the paper's chip* | HERMES, hardware in the loop | {PAPER_HW:.1f} ± 0.2 | | | | |")
    return "\n".join(lines)


def epoch_table(results: Path) -> str:
    """Test NLL at epoch e (what a run of e epochs ends with) and at its best validation epoch up to e."""
    hil = pd.read_csv(results / "jsb_hil_history.csv")
    ref = pd.read_csv(results / "jsb_analog_history.csv")
    frames = {"hermes_hil": hil[hil["variant"] == "hermes_hil"],
              "paper_hw_protocol (reference)": ref[ref["variant"] == "paper_hw_protocol"]}
    epochs = [5, 10, 15, 20, 30, 40]
    lines = ["| variant | " + " | ".join(f"{e} epochs: final / best valid" for e in epochs) + " |",
             "|---|" + "---:|" * len(epochs)]
    for name, frame in frames.items():
        cells = []
        for e in epochs:
            upto = frame[frame["epoch"] <= e]
            if upto.empty or upto["epoch"].max() < e:
                cells.append("–")
                continue
            final = upto[upto["epoch"] == e]["test_nll"]
            best = upto.loc[upto.groupby("seed")["valid_nll"].idxmin(), "test_nll"]
            cells.append(f"{final.mean():.2f} ± {final.std(ddof=0):.2f} / {best.mean():.2f} ± {best.std(ddof=0):.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def deploy_table(results: Path, name: str) -> str:
    """The rows of studies/<name>.yaml as it is now (its config hash), per mode and time, with the targets."""
    from imc_osttp.deploy import load_deploy, own_rows

    deploy = load_deploy(Path("studies") / f"{name}.yaml", {"output_dir": str(results)})
    rows = own_rows(deploy)
    if rows.empty:
        return f"*{results / name}.csv: no rows of the present deploy file yet.*"
    seeds = sorted(rows["seed"].unique())
    times = [t for t in TIMES if t in set(rows["time_s"])]
    lines = [f"Seeds: {', '.join(map(str, seeds))}.", "",
             "| mode | " + " | ".join(TIMES[t] for t in times) + " | writes in the year | within 0.2 of 1 s, "
             "every time and seed | beats frozen_gdc at 1 year, every seed |",
             "|---|" + "---:|" * len(times) + "---:|---|---|"]
    gdc = rows[rows["mode"] == "frozen_gdc"].set_index(["seed", "time_s"])["test_nll"]
    for mode in [m for m in deploy.modes if m in set(rows["mode"])]:
        frame = rows[rows["mode"] == mode]
        cells = [pm(frame[frame["time_s"] == t]["test_nll"], 2) for t in times]
        per_seed = frame.pivot_table(index="seed", columns="time_s", values="test_nll")
        within = bool(((per_seed.sub(per_seed[times[0]], axis=0)).abs() <= 0.2).all().all())
        worst = float(per_seed.sub(per_seed[times[0]], axis=0).max().max())
        year = times[-1]
        beats = "–" if mode == "frozen_gdc" or gdc.empty else (
            "yes" if all(per_seed.loc[s, year] < gdc.loc[(s, year)] for s in per_seed.index) else "no")
        at_year = frame[frame["time_s"] == year]
        written = f"{at_year['writes'].mean():.0f}" if mode.startswith("learning") else "–"
        if at_year["programmed"].mean() > 0:
            written += f" (and {at_year['programmed'].mean():.2g} devices reprogrammed)"
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {written} | {'yes' if within else 'no'} "
                     f"(worst {worst:+.2f}) | {beats} |")
    return "\n".join(lines)


def probe_table(results: Path) -> str:
    """benchmarks/deploy_gdc_probe.py: frozen_gdc's test NLL at each time, by way of compensating."""
    path = results / "deploy_gdc_probe.csv"
    if not path.exists():
        return f"*{path} not run yet.*"
    probe = pd.read_csv(path)
    columns = {"nll_gdc_old": "compensation as it was (compounding)", "factor_W2_gdc_old": "its factor, W2",
               "nll_gdc": "compensation fixed", "factor_W2_gdc": "its factor, W2",
               "nll_exact": "exact factor (no read noise)", "factor_W2_exact": "exact factor, W2",
               "nll_uniform_nu": "fixed, every device ν = mean (no spread)",
               "nll_no_io_noise": "fixed, noise-free unquantised converters"}
    lines = ["| time | " + " | ".join(columns.values()) + " |", "|---|" + "---:|" * len(columns)]
    for _, row in probe.iterrows():
        lines.append(f"| {TIMES.get(row['time_s'], row['time_s'])} | "
                     + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    lines.append(f"\nSeed {int(probe['seed'].iloc[0])}. Drifting to one year in one step or in the grid's "
                 f"steps: largest weight difference {probe['max_dw_one_vs_grid_steps'].iloc[0]:.1e}; "
                 f"five evaluations at 1 s: std {probe['eval_std_at_1s'].iloc[0]:.4f}.")
    return "\n".join(lines)


def write_section(doc: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN {re.escape(name)} -->\n).*?(<!-- END {re.escape(name)} -->)", re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{name}: no <!-- BEGIN {name} --> ... <!-- END {name} --> in the document")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc", type=Path, default=Path("docs/chip.md"))
    parser.add_argument("--results", type=Path, default=Path("results"))
    args = parser.parse_args()
    doc = args.doc.read_text()
    tables = {"hil": hil_table(args.results), "hil_epochs": epoch_table(args.results),
              "gdc_probe": probe_table(args.results)}
    for name in ("jsb_deploy", "jsb_deploy_hermes"):
        tables[name] = deploy_table(args.results, name)
    for name, body in tables.items():
        doc = write_section(doc, name, body)
    args.doc.write_text(doc)
    print("\n\n".join(tables.values()))


if __name__ == "__main__":
    main()
