"""The worked other study (imc_osttp/examples/other_study.py), short version: every task and setting trains,
the CSVs are written run by run, a rerun trains nothing twice, and the docs table is rendered from the CSV."""

from __future__ import annotations

import pandas as pd
import pytest

pytest.importorskip("aihwkit")
pytest.importorskip("sklearn")

from imc_osttp.examples import other_study  # noqa: E402


def test_the_short_study_writes_its_csvs_table_and_figure(tmp_path, jsb_path, monkeypatch):
    monkeypatch.setenv("IMC_OSTTP_DATA", str(jsb_path.parent.parent))
    other_study.run_study(tmp_path, list(other_study.TASKS), list(other_study.SETTINGS), quick=True)
    runs = pd.read_csv(tmp_path / other_study.RUNS_CSV)
    assert len(runs) == len(other_study.TASKS) * len(other_study.SETTINGS)
    assert set(pd.read_csv(tmp_path / other_study.HISTORY_CSV).epoch) == {1, 2}
    counted = runs[runs.setting.isin(["pcm_4device", "pcm_4device_scaled"])]
    assert (counted.pulses > 0).all()
    assert runs[runs.setting == "aihwkit_mp_pcm"].pulses.isna().all()  # fired inside aihwkit's C++

    other_study.run_study(tmp_path, ["regression"], ["digital"], quick=True)  # done already: nothing retrained
    assert len(pd.read_csv(tmp_path / other_study.RUNS_CSV)) == len(runs)

    doc = tmp_path / "other_study.md"
    doc.write_text(f"# Title\n\nprose\n\n{other_study.BEGIN}\nold table\n{other_study.END}\n\nmore prose\n")
    text = other_study.render(tmp_path, doc)
    page = doc.read_text()
    assert "old table" not in page and text in page and page.endswith(f"{other_study.END}\n\nmore prose\n")
    summary = pd.read_csv(tmp_path / other_study.SUMMARY_CSV)
    assert len(summary) == len(runs)
    regression = summary[summary.task == "regression"].set_index("setting")
    ratio = regression.test_mean["pcm_4device"] / regression.test_mean["ideal"]
    assert f"| pcm_4device | {regression.lr['pcm_4device']:g} | 1 |" in text and f"{ratio:.2f}" in text
    assert (tmp_path / other_study.FIGURE).stat().st_size > 0
