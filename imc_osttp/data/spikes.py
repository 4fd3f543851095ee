"""Spike-train classification data in the SHD HDF5 layout (SHD itself, and FSDD encoded by `audio`).

Layout (Cramer et al. 2020): `spikes/times` (vlen float, seconds), `spikes/units`
(vlen uint16, 0-699), `labels` (uint16), `extra/speaker`, `extra/keys`, `extra/meta_info`.
Neither set has a validation split, so the test split also serves as `valid`: a run
that selects an epoch on it reports a test number that saw the selection (SPEC §4
reports the maximum test accuracy over the epochs, which is the same thing).
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor

from ..config import DataConfig
from ..errors import DataError
from .batching import Split, TaskData
from .sources import RemoteFile, cache_dir, candidates, locate

N_CHANNELS = 700
CLASSES = {"shd": 20, "fsdd": 10}
# The official SHD files; their sha256 is not published, so downloads are unverified
# (a truncated download fails the gunzip or the layout check instead).
SHD_URL = "https://zenkelab.org/datasets/"
REQUIRED = ("spikes/times", "spikes/units", "labels")
CHUNK_CELLS = 1 << 22  # bins counted per bincount call: bounds the int64 scratch to 32 MB


def bin_spikes(times: Sequence[np.ndarray], units: Sequence[np.ndarray], n_steps: int, max_time: float,
               n_channels: int = N_CHANNELS, dtype: torch.dtype = torch.float32) -> Tensor:
    """Spike counts [N, n_steps, n_channels] in equal bins over [0, max_time).

    Bin k holds the spikes with edges[k] <= t < edges[k+1], edges = linspace(0, max_time, n_steps+1),
    compared in float64; spikes before 0 or at/after max_time are dropped. Integer dtypes
    (uint8 keeps SHD at a quarter of float32's 2.3 GB) saturate at their maximum count.
    """
    x = torch.zeros(len(times), n_steps, n_channels, dtype=dtype)
    edges = np.linspace(0.0, max_time, n_steps + 1)
    cap = None if dtype.is_floating_point else torch.iinfo(dtype).max
    cells = n_steps * n_channels
    chunk = max(1, CHUNK_CELLS // cells)
    for start in range(0, len(times), chunk):
        stop = min(start + chunk, len(times))
        lengths = np.array([len(t) for t in times[start:stop]])
        if not np.array_equal(lengths, [len(u) for u in units[start:stop]]):
            raise DataError("spikes/times and spikes/units differ in length for some sample")
        t = np.concatenate(times[start:stop]).astype(np.float64)
        u = np.concatenate(units[start:stop]).astype(np.int64)
        if u.size and (u.min() < 0 or u.max() >= n_channels):
            raise DataError(f"spike unit ids span {u.min()}-{u.max()}, outside 0-{n_channels - 1}")
        sample = np.repeat(np.arange(stop - start), lengths)
        keep = (t >= 0) & (t < max_time)
        step = np.searchsorted(edges, t[keep], side="right") - 1
        flat = sample[keep] * cells + step * n_channels + u[keep]
        counts = np.bincount(flat, minlength=(stop - start) * cells)
        if cap is not None:
            np.minimum(counts, cap, out=counts)
        x[start:stop] = torch.from_numpy(counts.reshape(stop - start, n_steps, n_channels))
    return x


def _open(path: Path) -> h5py.File:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
    missing = [name for name in REQUIRED if name not in f]
    if missing:
        f.close()
        raise DataError(f"{path}: no dataset '{missing[0]}' (expected the SHD layout: {', '.join(REQUIRED)})")
    return f


def read_labels(path: str | Path) -> np.ndarray:
    """The labels alone: enough to choose a subset before binning."""
    with _open(Path(path)) as f:
        return np.asarray(f["labels"], dtype=np.int64)


def load_spike_h5(path: str | Path, n_steps: int, max_time: float, *, indices: np.ndarray | None = None,
                  n_channels: int = N_CHANNELS, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Binned spike counts x [N, n_steps, n_channels] and int64 labels [N] of an SHD-layout file.

    `indices` reads only those samples (returned in file order); see `bin_spikes` for the binning.
    """
    path = Path(path)
    with _open(path) as f:
        rows = slice(None) if indices is None else np.unique(indices)
        try:
            times, units = f["spikes/times"][rows], f["spikes/units"][rows]
            labels = np.asarray(f["labels"][rows], dtype=np.int64)
        except (OSError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: spikes or labels unreadable ({exc})") from None
    if not len(times) == len(units) == len(labels):
        raise DataError(f"{path}: {len(times)} spike trains, {len(units)} unit lists, {len(labels)} labels")
    try:
        x = bin_spikes(times, units, n_steps, max_time, n_channels, dtype)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    return x, torch.from_numpy(labels)


def write_spike_h5(path: str | Path, times: Sequence[np.ndarray], units: Sequence[np.ndarray],
                   labels: Sequence[int] | np.ndarray, *, speakers: Sequence[int] | np.ndarray,
                   keys: Sequence[str], meta_info: Mapping[str, np.ndarray],
                   attrs: Mapping[str, object] | None = None) -> Path:
    """Write spike trains in SHD's layout, atomically (a crash leaves no half file for a loader to find)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        with h5py.File(tmp, "w") as f:
            for name, ragged, kind in (("times", times, np.float32), ("units", units, np.uint16)):
                f.create_dataset(f"spikes/{name}", data=_ragged(ragged, kind), dtype=h5py.vlen_dtype(kind))
            f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))
            f.create_dataset("extra/speaker", data=np.asarray(speakers, dtype=np.uint16))
            _strings_or_values(f, "extra/keys", list(keys))
            for name, values in meta_info.items():
                _strings_or_values(f, f"extra/meta_info/{name}", values)
            f.attrs.update(attrs or {})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _strings_or_values(f: h5py.File, name: str, values: Sequence | np.ndarray) -> None:
    values = np.asarray(values)
    if values.dtype.kind == "U":  # h5py stores variable-length UTF-8, not numpy's fixed-width unicode
        f.create_dataset(name, data=values.tolist(), dtype=h5py.string_dtype())
    else:
        f.create_dataset(name, data=values)


def _ragged(arrays: Sequence[np.ndarray], dtype: type) -> np.ndarray:
    """An object array of 1-d arrays, as h5py writes vlen data (np.array would stack equal lengths)."""
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = np.asarray(a, dtype=dtype)
    return out


def balanced_subset(labels: np.ndarray, count: int | None, seed: int = 0) -> np.ndarray | None:
    """Sorted indices of `count` samples with the classes as equal as possible, drawn at random (seeded).

    The files are sorted by class, so the first `count` samples would be one or two classes.
    """
    if count is None or count >= len(labels):
        return None
    order = np.random.default_rng(seed).permutation(len(labels))
    by_class = np.argsort(labels[order], kind="stable")
    grouped = labels[order][by_class]
    rank = np.empty(len(labels), dtype=np.int64)
    rank[by_class] = np.arange(len(labels)) - np.searchsorted(grouped, grouped)  # rank within its class
    return np.sort(order[np.argsort(rank, kind="stable")[:count]])


def gunzip(src: Path, dest: Path) -> Path:
    """Unpack a downloaded .gz into the cache; the cache's own .gz is removed once unpacked."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with gzip.open(src) as fin, tmp.open("wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        tmp.replace(dest)
    except (OSError, EOFError) as exc:
        raise DataError(f"{src}: not a complete gzip file ({exc}); delete it and try again") from None
    finally:
        tmp.unlink(missing_ok=True)
    if src.parent == cache_dir():
        src.unlink()
    return dest


def locate_spike_file(task: str, split: str, configured: str | None = None,
                      allow_download: bool = True) -> Path:
    """`{task}_{split}.h5` from data.path (a directory), IMC_OSTTP_DATA or the cache; SHD downloads as .gz."""
    if configured and Path(configured).expanduser().is_file():
        raise DataError(f"data.path {configured}: give the directory that holds {task}_train.h5 and "
                        f"{task}_test.h5, not a file")
    plain = RemoteFile(f"{task}_{split}.h5", url="", sha256=None, subdir=task)  # looked up, never fetched
    places = candidates(plain, configured)
    found = next((p for p in places if p.is_file()), None)
    if found is not None:
        return found
    if task == "shd":
        packed = replace(plain, name=plain.name + ".gz", url=SHD_URL + plain.name + ".gz")
        try:
            src = locate(packed, configured, allow_download)
        except DataError as exc:
            raise DataError(f"{plain.name}: not found; {exc}") from None
        return gunzip(src, cache_dir() / plain.name)
    looked = ", ".join(str(p) for p in places)
    raise DataError(f"{plain.name}: not found (looked in {looked}); make it with `imc-osttp encode-audio "
                    f"<fsdd>/recordings DIR` and point data.path or IMC_OSTTP_DATA at DIR")


def read_split(path: Path, cfg: DataConfig, n_classes: int) -> Split:
    """One split; inputs stay uint8 counts (Batch.to makes them float per batch, and SHD train takes
    0.57 GB instead of 2.3), targets are the one-hot label expanded over the steps (views, no copies)."""
    indices = balanced_subset(read_labels(path), cfg.max_sequences)
    x, labels = load_spike_h5(path, cfg.n_steps, cfg.max_time, indices=indices, dtype=torch.uint8)
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{path}: labels span {int(labels.min())}-{int(labels.max())}, "
                        f"outside 0-{n_classes - 1}")
    onehot = torch.nn.functional.one_hot(labels, n_classes).float()
    targets = onehot[:, None, :].expand(-1, cfg.n_steps, -1)
    return Split(list(x.unbind(0)), list(targets.unbind(0)), labels)


def load_spike_task(cfg: DataConfig, allow_download: bool = True) -> TaskData:
    """SHD (20 classes) or encoded FSDD (10): train and test splits; the test split doubles as `valid`."""
    if cfg.task not in CLASSES:
        raise DataError(f"data.task {cfg.task!r} is not a spike task ({', '.join(CLASSES)})")
    n_classes = CLASSES[cfg.task]
    train, test = (read_split(locate_spike_file(cfg.task, split, cfg.path, allow_download), cfg, n_classes)
                   for split in ("train", "test"))
    return TaskData(cfg.task, train, test, test, N_CHANNELS, n_classes, "classification")
