"""The docs' MLflow screenshot (docs/mlflow_chart_view.png): a real short study, digital against PCM.

    IMC_OSTTP_DATA=../shared/data .venv/bin/python scripts/screenshot_mlflow.py [--epochs 10] [--out PATH]

Trains `studies/jsb_analog.yaml`'s `digital` and `pcm_4device` variants (its protocol: OSTTP on
the full JSB split, batch 1, SGD lr 0.001; seed 0 and --epochs epochs instead of 3 × 40) with one
worker into a throwaway `mlflow server` on 127.0.0.1, then photographs the NLL curves (the chart
search set to "nll") in MLflow's model-training chart view with Debian's chromium, driven by
Playwright as tests/test_mlflow_ui.py drives it (its helpers serve and open the UI). About
1.5 min of one core at 10 epochs. Needs `bash scripts/setup.sh --test` (chromium, Playwright).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the UI helpers of the UI test: one way to serve and drive MLflow

from test_mlflow_ui import BROWSER_ARGS, CHROMIUM, QUIET, open_chart_view, serve  # noqa: E402

from imc_osttp.cli import main as cli  # noqa: E402

VARIANTS = ("digital", "pcm_4device")
STUDY = "jsb_analog"
# each run's colour in the charts (MLflow otherwise picks one by hashing the run id, and two runs may share it)
COLOURS = {"digital, seed 0": "#1f77b4", "pcm_4device, seed 0": "#ff7f0e"}


def short_study(folder: Path, epochs: int) -> Path:
    """jsb_analog with its digital and pcm_4device variants only, seed 0, `epochs` epochs, one worker."""
    study = yaml.safe_load((REPO / "studies" / f"{STUDY}.yaml").read_text())
    study.update(seeds=[0], workers=1, output_dir=str(folder / "results"),
                 variants={v: study["variants"][v] for v in VARIANTS})
    study["base"]["train"]["epochs"] = epochs
    path = folder / f"{STUDY}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def set_colour(page, run: str, colour: str) -> None:
    """Give a run its colour through the runs table's colour picker, until the table shows it."""
    label = page.get_by_role("link", name=run, exact=True).locator("xpath=preceding-sibling::label")
    want = "rgb({}, {}, {})".format(*(int(colour[i:i + 2], 16) for i in (1, 3, 5)))
    for _ in range(5):
        label.locator("input[type='color']").fill(colour, force=True)
        page.wait_for_timeout(1000)  # the UI takes a colour 300 ms after the last change
        if label.evaluate("l => getComputedStyle(l).backgroundColor") == want:
            return
    raise RuntimeError(f"the MLflow UI did not take colour {colour} for run '{run}'")


def photograph(url: str, experiment: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 720})
            open_chart_view(page, url, experiment)
            runs = page.get_by_placeholder('metrics.rmse < 1 and params.model = "tree"')
            runs.fill("attributes.run_name LIKE '%seed%'")  # the training runs, not the study's summary run
            runs.press("Enter")
            page.get_by_text(f"{len(COLOURS)} matching runs").wait_for()
            for run, colour in COLOURS.items():
                set_colour(page, run, colour)
            page.get_by_placeholder("Search metric charts").fill("nll")
            page.mouse.move(0, 0)  # no run highlighted
            page.wait_for_timeout(2000)  # the filtered charts redraw
            page.screenshot(path=str(out))
        finally:
            browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "mlflow_chart_view.png")
    args = parser.parse_args()
    if not Path(CHROMIUM).is_file():
        print(f"no chromium at {CHROMIUM}: run `bash scripts/setup.sh --test`", file=sys.stderr)
        return 2
    os.environ.update(QUIET)
    with tempfile.TemporaryDirectory(prefix="imc-osttp-screenshot-") as tmp, serve(Path(tmp)) as url:
        os.environ["MLFLOW_TRACKING_URI"] = url  # the study and its worker log to the throwaway server
        if cli(["study", str(short_study(Path(tmp), args.epochs))]) != 0:
            return 1
        import mlflow

        experiment = mlflow.MlflowClient(url).get_experiment_by_name(STUDY).experiment_id
        photograph(url, experiment, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
