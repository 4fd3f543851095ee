"""Learning rules (SPEC §2-3): each computes dE/dθ estimates into the backend's accumulator."""

from __future__ import annotations

from dataclasses import dataclass

from .. import registry
from ..config import RuleConfig
from ..data.batching import Batch
from ..network import SNUNet

registry.register_rule("bptt", None)  # no online signal: autograd through time (bptt.py)


@dataclass
class BatchStats:
    loss_sum: float  # summed loss over valid frames
    frames: int
    spikes: float  # summed hidden spikes over valid frames and units


def compute_update(rule: RuleConfig, net: SNUNet, batch: Batch) -> tuple[dict, BatchStats]:
    """Run the rule on one batch; returns dE/dθ (summed over time, mean over batch) and stats.

    With `rule.update_timing == "step"`, the update is applied at every step
    and the returned dict is empty.
    """
    if registry.rule(rule.name).signal is None:
        from .bptt import bptt_update

        return bptt_update(net, batch)
    from .online import online_update

    return online_update(rule, net, batch)
