"""Named random streams: every seeded draw of a run comes from exactly one of them.

A draw's seed is SeedSequence([run seed, stream, *indices]) with a fixed number of indices per stream, so two
draws share a seed only if they are the same draw: different streams differ in the second word, and a stream's
indices always have the same length (SeedSequence pads short entropy with zeros, so [s, k, 1] and [s, k, 1, 0]
would coincide if arities could vary).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """Every random stream of rayfed, with the indices that select one draw of it."""

    CLIENT_TRAINING = 1
    """(round, client): minibatch order, augmentation and dropout of a client's local update."""
    CLIENT_EVALUATION = 2
    """(round, client): augmentation of the notebook's per-client accuracy on training images."""
    GAN_INIT = 3
    """(round,): initial weights of a round's fresh audit G and D."""
    GAN_TRAINING = 4
    """(round,): noise, labels and batch order of the audit GAN's training."""
    PROBES = 5
    """(round,): noise and labels of the probe set P."""
    CLIENT_SELECTION = 6
    """(round,): the clients sampled into a round."""
    SISA_INIT = 7
    """(shard,): a shard model's initial weights."""
    SISA_STAGE = 8
    """(shard, stage): minibatch order, augmentation and dropout of one slice stage."""


ARITY = {
    Stream.CLIENT_TRAINING: 2, Stream.CLIENT_EVALUATION: 2, Stream.GAN_INIT: 1, Stream.GAN_TRAINING: 1,
    Stream.PROBES: 1, Stream.CLIENT_SELECTION: 1, Stream.SISA_INIT: 1, Stream.SISA_STAGE: 2,
}
"""How many indices select one draw of each stream."""


def stream_seed(run_seed: int, stream: Stream, *indices: int) -> int:
    """The 31-bit seed of one draw: `stream` of the run seeded `run_seed`, at `indices` (see `Stream`)."""
    if len(indices) != ARITY[stream]:
        raise ValueError(f"{stream.name} takes {ARITY[stream]} indices, got {len(indices)}")
    words = [int(run_seed), int(stream), *(int(i) for i in indices)]
    if min(words) < 0:
        raise ValueError(f"seed words must be >= 0, got {words}")
    return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)
