"""Synthetic JSB-shaped sequences (88 keys, ~4 notes per step) for benchmarks of long T."""

from __future__ import annotations

import torch

from .batching import Split, TaskData


def synthetic_jsb(count: int, length: int, seed: int = 0) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    rolls = [(torch.rand(length + 1, 88, generator=g) < 4 / 88).float() for _ in range(count)]
    split = Split([r[:-1] for r in rolls], [r[1:] for r in rolls])
    return TaskData("synthetic", split, split, split, 88, 88, "multilabel")
