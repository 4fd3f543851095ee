"""Sequences of different lengths, padded into batches with a validity mask."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Split:
    """One split: inputs x_i [T_i, m], targets y_i [T_i, k] (y[t] is the target of step t), labels."""

    inputs: list[Tensor]
    targets: list[Tensor]
    labels: Tensor | None = None  # class labels (classification tasks)

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def frames(self) -> int:
        return sum(len(x) for x in self.inputs)

    def subset(self, count: int | None) -> Split:
        if count is None or count >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:count]
        return Split(self.inputs[:count], self.targets[:count], labels)


@dataclass
class TaskData:
    """A task's three splits and its sizes."""

    name: str
    train: Split
    valid: Split
    test: Split
    n_in: int
    n_out: int
    kind: str  # "multilabel" (per-step targets) or "classification" (one label per sequence)


@dataclass
class Batch:
    x: Tensor  # [B, T, m]
    y: Tensor  # [B, T, k]
    mask: Tensor  # [B, T], 1 where step t is a real step of the sequence
    lengths: Tensor  # [B]
    labels: Tensor | None = None  # [B]

    @property
    def size(self) -> int:
        return self.x.shape[0]

    def to(self, dtype: torch.dtype, device: str = "cpu") -> Batch:
        labels = None if self.labels is None else self.labels.to(device)
        return Batch(self.x.to(device, dtype), self.y.to(device, dtype), self.mask.to(device, dtype),
                     self.lengths.to(device), labels)


def collate(inputs: list[Tensor], targets: list[Tensor], labels: Tensor | None = None) -> Batch:
    lengths = torch.tensor([len(x) for x in inputs])
    T = int(lengths.max())
    x = inputs[0].new_zeros(len(inputs), T, inputs[0].shape[-1])
    y = targets[0].new_zeros(len(inputs), T, targets[0].shape[-1])
    for i, (xi, yi) in enumerate(zip(inputs, targets, strict=True)):
        x[i, : len(xi)] = xi
        y[i, : len(yi)] = yi
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(x.dtype)
    return Batch(x, y, mask, lengths, labels)


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
    """Batches in a seeded random order (or in order when `generator` is None)."""
    order = torch.randperm(len(split), generator=generator) if generator is not None else torch.arange(len(split))
    for start in range(0, len(split), batch_size):
        idx = order[start : start + batch_size].tolist()
        labels = None if split.labels is None else split.labels[idx]
        yield collate([split.inputs[i] for i in idx], [split.targets[i] for i in idx], labels)
