"""The contract between learning rules and backends.

A rule computes *what* to change (an estimate of dE/dθ per parameter) and
adds it to an accumulator; the backend decides *how* the change reaches the
weights (an optimizer step on tensors, or pulse trains on analog tiles). An
update can be added densely or as a sum of rank-1 outer products, which is
the form a crossbar applies natively, so a backend can keep it factorised.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from .. import blas
from ..config import RunConfig


class Accumulator:
    """Sums a rule's gradient estimates until the backend applies them."""

    # rank-1 terms are buffered and summed by one GEMM per this many rows: the cost of
    # a few large GEMMs instead of one small one per step, with memory still flat in T
    CHUNK_ROWS = 4096

    def __init__(self, shapes: dict[str, torch.Size], like: Tensor) -> None:
        self.sums = {name: like.new_zeros(shape) for name, shape in shapes.items()}
        self.pending: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in shapes}
        self.pending_rows = dict.fromkeys(shapes, 0)

    def __contains__(self, name: str) -> bool:
        return name in self.sums

    def add(self, name: str, value: Tensor) -> None:
        """Add a dense estimate of the parameter's shape."""
        self.sums[name] += value

    def add_outer(self, name: str, left: Tensor, right: Tensor, crossbar: bool = True) -> None:
        """Add sum_b left_b^T right_b (left [B, m], right [B, n]): a batch of rank-1 terms.

        `crossbar=False` marks terms that are only a way to compute the sum (exact traces
        summed backwards over a chunk: right_b holds later steps' signals), which a crossbar
        could not apply as they arrive; an analog backend then writes their sum as a dense
        update. The tensors are kept, not copied, until the next flush: callers hand over fresh
        tensors (the online engine builds new ones every chunk) and never change them."""
        self.pending[name].append((left, right))
        self.pending_rows[name] += left.shape[0]
        if self.pending_rows[name] >= self.CHUNK_ROWS:
            self.flush(name)

    def flush(self, name: str) -> None:
        """Sum the buffered rank-1 terms of `name` into its dense total with one GEMM."""
        if self.pending[name]:
            lefts, rights = zip(*self.pending[name], strict=True)
            left, right = (lefts[0], rights[0]) if len(lefts) == 1 else (torch.cat(lefts), torch.cat(rights))
            blas.addmm_(self.sums[name], left.transpose(0, 1), right)
            self.pending[name].clear()
            self.pending_rows[name] = 0

    def add_eligibility(self, name: str, trace: Tensor, signal: Tensor) -> None:
        """Add sum_b trace_b * signal_b for a per-sample trace [B, m, n] and signal [B, n].

        One in-place addcmul_ per sample: each trace is read once and the m×n sum stays in
        cache. (trace * signal).sum(0) or einsum write and re-read a [B, m, n] temporary: 10×
        slower at the SHD size (benchmarks/bench_shd_traces.py)."""
        total = self.sums[name]
        for trace_b, signal_b in zip(trace, signal.unsqueeze(1), strict=True):
            total.addcmul_(trace_b, signal_b)

    def take(self, scale: float) -> dict[str, Tensor]:
        """The accumulated estimates times `scale`; the accumulator restarts from zero."""
        for name in self.sums:
            self.flush(name)
        out = {name: value * scale for name, value in self.sums.items()}
        for value in self.sums.values():
            value.zero_()
        return out


class Backend(Protocol):
    """What the network, the rules, deploy and tracking may ask of wherever the weights live. Nothing
    outside `backends/` reads `kind` to decide anything or reaches past these methods."""

    kind: str
    # whether mvm(name, x) is exactly x @ read(name): then the network may compute the product
    # itself, inside a fused time loop (imc_osttp/fused.py); a tile's read is noisy per call
    products_are_reads: bool
    # what this backend's stored results mean, e.g. "analog2": bumped when a change to the backend makes a
    # result it produced before mean something else (rows of an older version are retrained: docs/pipeline.md)
    results_version: str
    # whether weights change with chip time (advance_clock); deploy needs such a backend
    has_clock: bool
    # seconds of chip time that pass with every applied update (0: no clock while training)
    time_per_update: float
    # the torch optimizer that holds each trainable parameter's (scheduled) learning rate
    optimizer: torch.optim.Optimizer

    @classmethod
    def validate(cls, cfg: RunConfig) -> None:
        """Raise ConfigError (naming the key) if `cfg` cannot run on this backend; cheap, before training."""

    @staticmethod
    def run_tags(cfg: RunConfig) -> dict[str, str]:
        """Tags that say where a run's weights lived (MLflow tags and result-table columns)."""

    def mvm(self, name: str, x: Tensor) -> Tensor:
        """x W for the named matrix (W1, H1, W2)."""

    def mvm_t(self, name: str, d: Tensor) -> Tensor:
        """d Wᵀ: the transposed product (OSTL's learning signal needs W2ᵀ)."""

    def feedback(self, target: Tensor) -> Tensor:
        """y* [B_1 … B_L]: the projected target through the stacked fixed random matrices."""

    def feedback_matrix(self) -> Tensor:
        """The stacked `[B_1 … B_L]`, `[k, Σ n_l]`, as held (programmed, on an analog chip)."""

    def read(self, name: str) -> Tensor:
        """A digital view of a parameter (thresholds, biases, the diagonal of H)."""

    def parameters(self) -> dict[str, Tensor]:
        """All parameters as tensors (for BPTT's autograd, checkpoints and alignment)."""

    def accumulator(self) -> Accumulator:
        """A fresh accumulator for the trainable parameters."""

    def apply(self, grads: dict[str, Tensor]) -> None:
        """Hand gradient estimates dE/dθ to the optimizer and change the weights."""

    def end_epoch(self) -> dict[str, float]:
        """Advance the learning-rate schedule; return per-epoch backend metrics (e.g. pulses)."""

    def advance_clock(self, seconds: float) -> None:
        """Let `seconds` of chip time pass (weights drift where the backend has a clock)."""

    def copy(self) -> Backend:
        """An independent copy of the trained weights (a chip's devices, bounds and clocks): it evolves on
        its own and leaves this one untouched."""

    def pulse_total(self) -> float:
        """Device pulses fired on the trainable weights since the run began (NaN where not observable)."""

    def start_drift_compensation(self) -> None:
        """Take the reference read-out of global drift compensation: right after the last write."""

    def compensate_drift(self) -> dict[str, float]:
        """Rescale each trainable matrix's output by its reference read-out over today's; the factors."""
