"""A run's random streams, all from its seed: one for the data order, the initialisation, B, the exact
writer's rounding, deploy's adaptation stream and each analog tile (docs/pipeline.md, "Seeds").

Every stream is a `numpy.random.SeedSequence` with the run's seed as entropy and its own spawn key, so no
two streams of any run share a state, whatever the depth or the seed. Where the seeding these replaced gave
a stream a value no other stream could take, that value is kept, so committed results stay reproducible:

    stream       spawn key   seed value                  used by
    params       (1,)        1000·seed + 1 (torch)        the initial weights, thresholds, biases
    feedback     (2,)        1000·seed + 2                B_1 … B_L
    order        (3,)        1000·seed + 3                the training batches' order
    rounding     (4,)        1000·seed + 4                the exact pulse writer's stochastic rounding
    adaptation   (5,)        1000·seed + 5                deploy's adaptation stream
    tile i       (6, i)      1 + 10·seed + i              aihwkit's construction_seed of trainable tile i

A tile's construction seed (device-to-device variation) keeps 1 + 10·seed + i only for tiles 0-9 of seeds
0 … 2^31/10: there the old values were distinct, and tile 10 of seed s would have been tile 0 of seed s+1.
Every other tile takes its SeedSequence's state with the top bit set, a value the kept ones never reach.
aihwkit's construction seed is an unsigned 32-bit int, so two such tiles of different runs share a value
with probability 2^-31; within a run they are distinct by construction (checked in `tile_seeds`).
"""

from __future__ import annotations

import numpy as np
import torch

PURPOSES = {"params": 1, "feedback": 2, "order": 3, "rounding": 4, "adaptation": 5}
TILE = 6
LEGACY_TILES = 10  # tiles per seed that kept their value
TOP_BIT = 1 << 31


def stream(seed: int, purpose: str, *index: int) -> np.random.SeedSequence:
    """The SeedSequence of one stream (negative seeds are entropy too: sign and magnitude)."""
    key = TILE if purpose == "tile" else PURPOSES[purpose]
    return np.random.SeedSequence(entropy=[abs(seed), int(seed < 0)], spawn_key=(key, *index))


def generator(seed: int, purpose: str) -> torch.Generator:
    """A torch generator for one purpose of a run: 1000·seed + k, distinct for every (seed, purpose)."""
    return torch.Generator().manual_seed(1000 * seed + PURPOSES[purpose])


def tile_seeds(seed: int, count: int) -> list[int]:
    """aihwkit construction seeds (never 0, which means "from the clock") for a run's `count` tiles."""
    out: list[int] = []
    for i in range(count):
        value, draws = 1 + 10 * seed + i, 0
        if not (i < LEGACY_TILES and seed >= 0 and value < TOP_BIT):
            value = -1
        while value < 0 or value in out:  # a repeat of two fresh 31-bit states (p ~ 2^-32): draw again
            draws += 1
            value = int(stream(seed, "tile", i).generate_state(draws, np.uint32)[-1]) | TOP_BIT
        out.append(value)
    return out
