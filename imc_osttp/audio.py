"""A cochlea-like spike encoder: WAV recordings to spike trains in SHD's HDF5 layout.

It makes the Free Spoken Digit Dataset (FSDD) a second, offline-available spike task.
Per recording: peak-normalise; a 700-channel gammatone-shaped filterbank on the ERB
scale, applied in one FFT (zero phase); half-wave rectification averaged over 1 ms
(the hair cell's smoothing: low channels keep their phase locking, high ones give an
envelope); cube-root compression (loudness ~ intensity^(1/3)); then per channel an
integrate-and-fire unit driven by the compressed level above a threshold of hearing.
The drive is capped at one threshold per step, so a unit fires at most once per 1 ms
step (its refractory period), and without a leak the subtractive-reset unit is
exactly `floor(cumsum(drive))`: vectorised over time and channels, no Python loop.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import fft
from scipy.io import wavfile
from tqdm.auto import tqdm

from .data.spikes import N_CHANNELS, write_spike_h5
from .errors import DataError

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEST_TAKES = 5  # FSDD's official split: takes 0-4 of every digit and speaker are the test set
NAME = re.compile(r"(\d)_([A-Za-z0-9]+)_(\d+)\.wav")
PAD_S = 0.05  # zero padding: the narrowest filter's impulse response must not wrap around the FFT


@dataclass(frozen=True)
class Cochlea:
    """Encoder parameters (stored as attributes of every file written, for provenance)."""

    f_min: float = 50.0  # Hz, lowest channel centre
    f_max: float = 3800.0  # Hz, highest centre; FSDD is 8 kHz audio (Nyquist 4 kHz)
    step_s: float = 1e-3  # time step of the spiking units = spike-time resolution = refractory period
    hearing_threshold: float = 0.2  # compressed level (of a peak-normalised recording) that drives no spikes
    gain: float = 1.0  # drive per unit of compressed level above threshold, in firing thresholds per step


def erb_centres(f_min: float, f_max: float, n: int = N_CHANNELS) -> np.ndarray:
    """Centres equally spaced on the ERB-rate scale (Glasberg & Moore 1990), as along the cochlea."""
    rate = np.linspace(*(21.4 * np.log10(4.37e-3 * np.array([f_min, f_max]) + 1)), n)
    return (10 ** (rate / 21.4) - 1) / 4.37e-3


@lru_cache(maxsize=8)
def filterbank(n_fft: int, fs: float, f_min: float, f_max: float) -> np.ndarray:
    """|H(f)| [channels, n_fft//2+1] of 4th-order gammatone filters, peak gain 1."""
    centres = erb_centres(f_min, f_max)[:, None]
    bandwidth = 1.019 * 24.7 * (4.37e-3 * centres + 1)
    freqs = fft.rfftfreq(n_fft, 1 / fs)[None, :]
    return ((1 + ((freqs - centres) / bandwidth) ** 2) ** -2).astype(np.float32)


def cochleagram(signal: np.ndarray, fs: float, cochlea: Cochlea = Cochlea()) -> tuple[np.ndarray, float]:
    """Compressed, rectified filterbank output [channels, steps] and its step (s), about `step_s`."""
    peak = np.abs(signal).max(initial=0.0)
    x = signal.astype(np.float32) / (peak if peak > 0 else 1.0)
    n_fft = -(-(len(x) + int(PAD_S * fs)) // 1024) * 1024  # few distinct sizes: the filterbank cache hits
    bands = fft.irfft(fft.rfft(x, n_fft) * filterbank(n_fft, fs, cochlea.f_min, cochlea.f_max), n_fft)
    block = max(1, round(cochlea.step_s * fs))
    steps = len(x) // block
    rectified = np.maximum(bands[:, : steps * block], 0).reshape(len(bands), steps, block)
    return np.cbrt(rectified.mean(-1)), block / fs


def spike_times(level: np.ndarray, dt: float, cochlea: Cochlea = Cochlea()) -> tuple[np.ndarray, np.ndarray]:
    """Integrate-and-fire spikes of `level` [channels, steps]: times (s, sorted; a spike's time is the start
    of its step) and unit ids."""
    drive = np.clip(cochlea.gain * (level - cochlea.hearing_threshold), 0.0, 1.0)
    fired = np.diff(np.floor(np.cumsum(drive, axis=1, dtype=np.float64)), axis=1, prepend=0.0) > 0
    step, unit = np.nonzero(fired.T)  # time-major: spikes come out sorted by time
    return (step * dt).astype(np.float32), unit.astype(np.uint16)


def encode(signal: np.ndarray, fs: float, cochlea: Cochlea = Cochlea()) -> tuple[np.ndarray, np.ndarray]:
    """One recording's spike times (s) and unit ids (0-699)."""
    if fs < 2 * cochlea.f_max:
        raise ValueError(f"sample rate {fs} Hz is below twice the top channel's {cochlea.f_max} Hz")
    return spike_times(*cochleagram(signal, fs, cochlea), cochlea)


def parse_name(path: Path) -> tuple[int, str, int]:
    """(digit, speaker, take) from FSDD's `{digit}_{speaker}_{take}.wav`."""
    match = NAME.fullmatch(path.name)
    if match is None:
        raise DataError(f"{path}: not an FSDD recording name ({{digit}}_{{speaker}}_{{take}}.wav)")
    return int(match[1]), match[2], int(match[3])


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono samples (any scale: `cochleagram` normalises) and the sample rate."""
    try:
        fs, data = wavfile.read(path)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: unreadable WAV ({exc})") from None
    if len(data) == 0:
        raise DataError(f"{path}: WAV has no samples")
    data = data.astype(np.float32) - (128 if data.dtype == np.uint8 else 0)  # 8-bit WAV is unsigned
    return (data.mean(axis=1) if data.ndim == 2 else data), fs


def encode_directory(wav_dir: str | Path, out_dir: str | Path, cochlea: Cochlea = Cochlea(),
                     progress: bool = True) -> dict[str, Path]:
    """Encode every `*.wav` of `wav_dir` into `out_dir`/fsdd_train.h5 and fsdd_test.h5 (takes 0-4 = test).

    Labels are the digits, `extra/speaker` indexes the speakers in alphabetical order
    (`extra/meta_info/name`); SHD's age, gender and body height are unknown for FSDD
    and written as -1, "unknown" and NaN so that SHD readers still work.
    """
    wav_dir, out_dir = Path(wav_dir), Path(out_dir)
    if out_dir.is_file():
        raise DataError(f"{out_dir}: is a file; give a directory for fsdd_train.h5 and fsdd_test.h5")
    wavs = sorted(wav_dir.glob("*.wav")) if wav_dir.is_dir() else []
    if not wavs:
        raise DataError(f"{wav_dir}: not a directory of .wav files")
    names = [parse_name(path) for path in wavs]  # every name checked before the slow part
    speakers = sorted({speaker for _, speaker, _ in names})
    columns: dict[str, tuple[list, list, list, list]] = {"train": ([], [], [], []), "test": ([], [], [], [])}
    for path, (digit, speaker, take) in tqdm(list(zip(wavs, names, strict=True)), desc="encoding",
                                             unit="wav", disable=not progress):
        try:
            times, units = encode(*read_wav(path), cochlea)
        except ValueError as exc:
            raise DataError(f"{path}: {exc}") from None
        split = "test" if take < TEST_TAKES else "train"
        for column, value in zip(columns[split], (times, units, digit, speakers.index(speaker)), strict=True):
            column.append(value)
    n = len(speakers)
    meta_info = {"name": np.array(speakers), "age": np.full(n, -1), "gender": np.array(["unknown"] * n),
                 "body_height": np.full(n, np.nan)}
    attrs = {**asdict(cochlea), "source": str(wav_dir)}
    return {split: write_spike_h5(out_dir / f"fsdd_{split}.h5", times, units, labels, speakers=ids,
                                  keys=DIGITS, meta_info=meta_info, attrs=attrs)
            for split, (times, units, labels, ids) in columns.items()}
