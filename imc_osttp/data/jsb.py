"""JSB Chorales (Boulanger-Lewandowski 2012 split) as 88-key piano rolls, target = next step."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import DataError
from .batching import Split, TaskData
from .sources import RemoteFile, locate

JSB_FILE = RemoteFile(
    name="jsb-chorales-quarter.json",
    url="https://raw.githubusercontent.com/czhuang/JSB-Chorales-dataset/"
    "9a7f733ddb4ed91f48da64ac7f0f621c34aadd4d/jsb-chorales-quarter.json",
    sha256="2db9329f1881a1d3f49703ec556bf1d6f84b4f6c1d702c156536e93cf31e1c91",
    subdir="jsb",
)
LOWEST_MIDI = 21  # key 0 of the 88-key roll
KEYS = 88


def piano_roll(piece: list[list[int | float]]) -> torch.Tensor:
    """[T, 88] binary roll from a list of steps, each a list of sounding MIDI notes."""
    roll = torch.zeros(len(piece), KEYS)
    for t, notes in enumerate(piece):
        for note in notes:
            key = int(note) - LOWEST_MIDI
            if not 0 <= key < KEYS:
                raise DataError(f"MIDI note {note} outside the piano range 21-108")
            roll[t, key] = 1.0
    return roll


def split_from_pieces(pieces: list[list[list[int]]]) -> Split:
    """Inputs are steps 0..T-2, targets steps 1..T-1 (predict the next chord)."""
    rolls = [piano_roll(p) for p in pieces if len(p) >= 2]
    return Split([r[:-1] for r in rolls], [r[1:] for r in rolls])


def read_jsb(path: Path, max_sequences: int | None = None) -> TaskData:
    try:
        raw = json.loads(Path(path).read_text())
        parts = {name: raw[name] for name in ("train", "valid", "test")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a JSB chorales JSON with train/valid/test ({exc})") from None
    splits = {name: split_from_pieces(pieces).subset(max_sequences) for name, pieces in parts.items()}
    return TaskData("jsb", splits["train"], splits["valid"], splits["test"], KEYS, KEYS, "multilabel")


def load_jsb(path: str | None = None, max_sequences: int | None = None, allow_download: bool = True) -> TaskData:
    """Find (or download) the JSB file and return its three splits."""
    return read_jsb(locate(JSB_FILE, path, allow_download), max_sequences)
