"""Spike data: SHD-layout binning to the spike, the FSDD cochlea encoder, the spike-task loader."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from imc_osttp.audio import DIGITS, encode_directory
from imc_osttp.cli import main
from imc_osttp.config import DataConfig
from imc_osttp.data import load_spike_h5
from imc_osttp.data import spikes as spikes_module
from imc_osttp.data.batching import batches
from imc_osttp.data.spikes import bin_spikes, load_spike_task, write_spike_h5
from imc_osttp.errors import DataError

SHARED = Path(os.environ.get("IMC_OSTTP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data"))
RECORDINGS = SHARED / "fsdd" / "recordings"
# two test takes (0-4) and four train takes, one file per speaker
FSDD_FILES = ("0_george_0", "1_jackson_7", "2_lucas_12", "5_nicolas_3", "8_theo_30", "9_yweweler_49")


def write_official(path: Path, times: list[list[float]], units: list[list[int]], labels: list[int],
                   time_dtype: type = np.float32) -> Path:
    """A file in SHD's layout written with h5py directly, independent of `write_spike_h5`."""
    with h5py.File(path, "w") as f:
        for name, rows, kind in (("times", times, time_dtype), ("units", units, np.uint16)):
            data = np.empty(len(rows), dtype=object)
            data[:] = [np.asarray(r, dtype=kind) for r in rows]
            f.create_dataset(f"spikes/{name}", data=data, dtype=h5py.vlen_dtype(kind))
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))
    return path


def write_task(directory: Path, task: str, classes: int, per_class: dict[str, int]) -> None:
    """Random spike files `{task}_{split}.h5`, sorted by class like the real ones."""
    rng = np.random.default_rng(1)
    for split, count in per_class.items():
        labels = np.repeat(np.arange(classes), count)
        times = [np.sort(rng.uniform(0, 1.2, 50)) for _ in labels]
        units = [rng.integers(0, 700, 50) for _ in labels]
        write_spike_h5(directory / f"{task}_{split}.h5", times, units, labels, speakers=np.zeros(len(labels)),
                       keys=[str(k) for k in range(classes)], meta_info={})


def test_binning_is_exact_at_edges_and_max_time(tmp_path: Path) -> None:
    below_half = float(np.nextafter(np.float32(0.5), np.float32(0)))
    times = [[0.0, 0.25, 0.25, below_half, 0.5, 0.75, 1.0, 1.5], []]
    units = [[0, 1, 1, 2, 3, 699, 4, 5], []]
    path = write_official(tmp_path / "s.h5", times, units, [3, 1])
    x, labels = load_spike_h5(path, n_steps=4, max_time=1.0)
    expected = torch.zeros(2, 4, 700)
    expected[0, 0, 0] = 1  # t = 0 opens bin 0
    expected[0, 1, 1] = 2  # two spikes on the edge 0.25 open bin 1 together
    expected[0, 1, 2] = 1  # just below 0.5 stays in bin 1
    expected[0, 2, 3] = 1  # exactly 0.5 opens bin 2
    expected[0, 3, 699] = 1  # t = 1.0 (= max_time) and 1.5 are dropped
    assert x.dtype == torch.float32 and labels.dtype == torch.int64
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    assert labels.tolist() == [3, 1]


def test_float64_edges_land_in_their_own_bin(tmp_path: Path) -> None:
    edges = np.linspace(0.0, 0.7, 101)[:-1]  # 0.007 is not a binary fraction: naive floor(t / dt) misbins
    path = write_official(tmp_path / "s.h5", [edges], [np.zeros(100, int)], [0], time_dtype=np.float64)
    x, _ = load_spike_h5(path, n_steps=100, max_time=0.7)
    torch.testing.assert_close(x[0, :, 0], torch.ones(100), rtol=0, atol=0)


def test_chunked_binning_matches_a_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spikes_module, "CHUNK_CELLS", 2 * 10 * 700)  # two samples per chunk
    rng = np.random.default_rng(0)
    times = [rng.uniform(-0.1, 1.1, n) for n in (40, 0, 7, 300, 1)]
    units = [rng.integers(0, 700, len(t)) for t in times]
    expected = torch.zeros(5, 10, 700)
    for i, (ts, us) in enumerate(zip(times, units, strict=True)):
        for t, u in zip(ts, us, strict=True):
            if 0 <= t < 1:
                expected[i, int(t * 10), u] += 1
    torch.testing.assert_close(bin_spikes(times, units, 10, 1.0), expected, rtol=0, atol=0)


def test_uint8_counts_saturate() -> None:
    x = bin_spikes([np.full(300, 0.1)], [np.zeros(300, int)], 2, 1.0, dtype=torch.uint8)
    assert x.dtype == torch.uint8 and int(x[0, 0, 0]) == 255


def test_bad_files_name_the_problem(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "layout.h5", "w") as f:
        f.create_dataset("labels", data=np.zeros(1, np.uint16))
        f.create_dataset("spikes/times", data=np.zeros(1))
    with pytest.raises(DataError, match="spikes/units"):
        load_spike_h5(tmp_path / "layout.h5", 10, 1.0)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="junk.h5: not a readable HDF5"):
        load_spike_h5(tmp_path / "junk.h5", 10, 1.0)
    path = write_official(tmp_path / "units.h5", [[0.1]], [[700]], [0])
    with pytest.raises(DataError, match="units.h5: spike unit ids span 700-700"):
        load_spike_h5(path, 10, 1.0)


@pytest.mark.skipif(not RECORDINGS.is_dir(), reason=f"FSDD recordings not found at {RECORDINGS} "
                    "(set IMC_OSTTP_SHARED_DATA to the shared data directory)")
def test_encoder_on_fsdd_reads_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wavs = tmp_path / "wav"
    wavs.mkdir()
    for name in FSDD_FILES:
        shutil.copy(RECORDINGS / f"{name}.wav", wavs)
    assert main(["encode-audio", str(wavs), str(tmp_path / "out"), "--quiet"]) == 0
    assert "train: 4 recordings" in capsys.readouterr().out
    for split, digits, speakers in (("train", [1, 2, 8, 9], [1, 2, 4, 5]), ("test", [0, 5], [0, 3])):
        path = tmp_path / "out" / f"fsdd_{split}.h5"
        x, labels = load_spike_h5(path, n_steps=100, max_time=1.0)
        assert labels.tolist() == digits
        with h5py.File(path) as f:
            assert f["extra/speaker"][:].tolist() == speakers
            assert [key.decode() for key in f["extra/keys"]] == list(DIGITS)
            assert [t.size for t in f["spikes/times"]] == [u.size for u in f["spikes/units"]]
            assert all(np.all(np.diff(t) >= 0) for t in f["spikes/times"])
        per_sample = x.sum((1, 2))
        assert ((per_sample > 500) & (per_sample < 30_000)).all(), per_sample
        active = (x.sum(1) > 0).float().mean(1)
        assert ((active > 0.1) & (active < 0.95)).all(), active


def test_encoder_names_bad_files(tmp_path: Path) -> None:
    (tmp_path / "hello.wav").write_bytes(b"")
    with pytest.raises(DataError, match="hello.wav: not an FSDD recording name"):
        encode_directory(tmp_path, tmp_path / "out", progress=False)
    (tmp_path / "hello.wav").unlink()
    (tmp_path / "3_ann_1.wav").write_bytes(b"RIFF junk")
    with pytest.raises(DataError, match="3_ann_1.wav: unreadable WAV"):
        encode_directory(tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="not a directory of .wav files"):
        encode_directory(tmp_path / "none", tmp_path / "out", progress=False)


def test_load_spike_task_shapes_and_balanced_subset(tmp_path: Path) -> None:
    write_task(tmp_path, "fsdd", 10, {"train": 3, "test": 1})
    cfg = DataConfig(task="fsdd", path=str(tmp_path), n_steps=20, max_time=0.5)
    data = load_spike_task(cfg)
    assert (data.kind, data.n_in, data.n_out) == ("classification", 700, 10)
    assert (len(data.train), len(data.test)) == (30, 10)
    assert data.valid is data.test
    x, labels = load_spike_h5(tmp_path / "fsdd_train.h5", 20, 0.5)
    assert data.train.inputs[4].shape == (20, 700)
    torch.testing.assert_close(data.train.inputs[4].float(), x[4])
    assert torch.equal(data.train.labels, labels)
    target = data.train.targets[4]
    assert target.shape == (20, 10) and (target.argmax(-1) == labels[4]).all() and (target.sum(-1) == 1).all()
    batch = next(batches(data.train, 8)).to(torch.float32)
    assert batch.x.shape == (8, 20, 700) and batch.y.shape == (8, 20, 10)
    small = cfg.model_copy(update={"max_sequences": 10})
    subset, again = load_spike_task(small), load_spike_task(small)
    assert sorted(subset.train.labels.tolist()) == list(range(10))  # one per class, not the first 10
    assert torch.equal(torch.stack(subset.train.inputs), torch.stack(again.train.inputs))  # seeded


def test_missing_files_give_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMC_OSTTP_DATA", raising=False)
    monkeypatch.setenv("IMC_OSTTP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="fsdd_train.h5: not found.*encode-audio"):
        load_spike_task(DataConfig(task="fsdd", path=str(tmp_path)))
    with pytest.raises(DataError, match="shd_train.h5: not found.*downloads are off"):
        load_spike_task(DataConfig(task="shd"), allow_download=False)


def test_shd_gz_is_unpacked_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_task(tmp_path, "shd", 20, {"train": 1, "test": 1})
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split in ("train", "test"):
        packed = gzip.compress((tmp_path / f"shd_{split}.h5").read_bytes())
        (data_dir / f"shd_{split}.h5.gz").write_bytes(packed)
    monkeypatch.setenv("IMC_OSTTP_DATA", str(data_dir))
    monkeypatch.setenv("IMC_OSTTP_CACHE", str(tmp_path / "cache"))
    data = load_spike_task(DataConfig(task="shd", n_steps=10), allow_download=False)
    assert (data.n_out, len(data.train)) == (20, 20)
    assert (tmp_path / "cache" / "shd_train.h5").is_file() and (data_dir / "shd_train.h5.gz").is_file()
