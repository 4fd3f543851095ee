"""Shipped studies and device configurations are found by name as well as by path."""

from __future__ import annotations

from pathlib import Path

import pytest

from imc_osttp.cli import main
from imc_osttp.named import studies, study_file
from imc_osttp.pipeline.spec import load_spec

REPO = Path(__file__).resolve().parents[1]


def test_a_study_name_is_the_shipped_file():
    assert studies() == sorted(p.stem for p in (REPO / "studies").glob("*.yaml"))
    assert study_file("jsb_quick").samefile(REPO / "studies" / "jsb_quick.yaml")
    assert load_spec("jsb_quick") == load_spec(REPO / "studies" / "jsb_quick.yaml")


@pytest.mark.parametrize(("args", "message"), [
    (["study", "jsb_quik"], "study 'jsb_quik': not found; did you mean 'jsb_quick'?"),
    (["study", "studies/nothing.yaml"], "studies/nothing.yaml: no such study file"),
    (["sweep", "sweep_smok"], "did you mean 'sweep_smoke'?"),
    (["deploy", "jsb_deploi"], "did you mean 'jsb_deploy'?"),
])
def test_a_missing_study_is_one_line_with_the_closest_name(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("imc-osttp: error:") and message in err and "Traceback" not in err
