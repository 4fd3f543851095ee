"""Shared fixtures: the offline data beside the checkout, small configs, a temporary MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("IMC_OSTTP_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))
JSB_JSON = SHARED_DATA / "jsb" / "jsb-chorales-quarter.json"

torch.set_num_threads(1)


@pytest.fixture
def jsb_path() -> Path:
    if not JSB_JSON.is_file():
        pytest.skip(f"JSB data not found at {JSB_JSON} (set IMC_OSTTP_SHARED_DATA)")
    return JSB_JSON


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
