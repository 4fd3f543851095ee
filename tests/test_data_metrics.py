from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from imc_osttp.data.jsb import JSB_FILE, load_jsb, piano_roll
from imc_osttp.data.sources import RemoteFile, locate
from imc_osttp.errors import DataError
from imc_osttp.metrics import frequency_nll, random_nll
from imc_osttp.readout import SigmoidReadout


def test_metric_is_88_ln2_for_half_probability():
    logits = torch.zeros(5, 88)
    target = (torch.rand(5, 88) < 0.1).float()
    per_frame = SigmoidReadout.loss(logits, target)
    assert torch.allclose(per_frame, torch.full((5,), 88 * math.log(2)))
    assert random_nll(88) == pytest.approx(61.0, abs=0.01)


def test_jsb_standard_split(jsb_path):
    data = load_jsb(str(jsb_path))
    assert (len(data.train), len(data.valid), len(data.test)) == (229, 76, 77)
    x, y = data.train.inputs[0], data.train.targets[0]
    assert x.shape[1] == 88 and torch.equal(x[1:], y[:-1])  # target = next step
    assert frequency_nll(data.train, data.test) == pytest.approx(11.09, abs=0.01)


def test_piano_roll_maps_midi_21_to_key_0():
    roll = piano_roll([[21, 108], [60]])
    assert roll[0, 0] == 1 and roll[0, 87] == 1 and roll[1, 39] == 1 and roll.sum() == 3


def write_json(path, pieces=3):
    piece = [[60, 64, 67], [62, 65], [64, 67, 71], [60]]
    path.write_text(json.dumps({s: [piece] * pieces for s in ("train", "valid", "test")}))
    return path


def test_env_directory_and_checksum(tmp_path, monkeypatch):
    d = tmp_path / "data" / "jsb"
    d.mkdir(parents=True)
    write_json(d / JSB_FILE.name)
    monkeypatch.setenv("IMC_OSTTP_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("IMC_OSTTP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="checksum mismatch"):  # a small file is not the real one
        load_jsb(None, allow_download=False)


def test_explicit_path_is_parsed_not_checksummed(tmp_path):
    data = load_jsb(str(write_json(tmp_path / "mine.json", pieces=2)))
    assert len(data.train) == 2 and data.train.inputs[0].shape == (3, 88)


def test_corrupt_file_gives_one_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a JSB chorales JSON"):
        load_jsb(str(bad))


def test_missing_everywhere_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("IMC_OSTTP_DATA", raising=False)
    monkeypatch.setenv("IMC_OSTTP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"looked in .*cache.*downloads are off"):
        load_jsb(None, allow_download=False)
    with pytest.raises(DataError, match="not found at"):
        load_jsb(str(tmp_path / "nowhere.json"))


def test_download_verifies_checksum_into_cache(tmp_path, monkeypatch):
    """The real download path, against a local file:// source."""
    src = write_json(tmp_path / "src.json")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    monkeypatch.delenv("IMC_OSTTP_DATA", raising=False)
    monkeypatch.setenv("IMC_OSTTP_CACHE", str(tmp_path / "cache"))
    good = RemoteFile("x.json", src.as_uri(), digest)
    path = locate(good)
    assert path == tmp_path / "cache" / "x.json" and path.read_bytes() == src.read_bytes()
    bad = RemoteFile("y.json", src.as_uri(), "0" * 64)
    with pytest.raises(DataError, match="checksum mismatch"):
        locate(bad)
    assert not (tmp_path / "cache" / "y.json").exists()
    unreachable = RemoteFile("z.json", (tmp_path / "absent.json").as_uri(), None)
    with pytest.raises(DataError, match="download from .* failed"):
        locate(unreachable)


def test_configured_path_never_falls_back_to_other_places(tmp_path, monkeypatch):
    d = tmp_path / "env"
    d.mkdir()
    write_json(d / JSB_FILE.name)
    monkeypatch.setenv("IMC_OSTTP_DATA", str(d))
    with pytest.raises(DataError, match="not found at"):
        load_jsb(str(tmp_path / "typo.json"))
