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
    SISA_LAYOUT = 9
    """(): the permutation of the training indices cut into shards and slices."""
    SISA_FORGET = 10
    """(): the forget set drawn for `unlearn.forget: N`."""
    SISA_MEMBERSHIP = 11
    """(part,): the membership audit's 0 member sample, 1 non-member sample, 2 the attack's CV folds and its
    bootstrap resamples (one seed for both)."""
    BACKDOOR_POISON = 12
    """(): the training points poisoned."""
    BACKDOOR_TRIGGER = 13
    """(part,): random trigger positions on 0 the poisoned training images, 1 the triggered test images."""
    UNSHARDED_INIT = 14
    """(): initial weights of the unsharded model of the approximate-unlearning baselines."""
    UNSHARDED_TRAINING = 15
    """(part,): minibatch order of the unsharded model's 0 training (and retraining), 1 fine-tuning, 2 NegGrad+,
    3 SCRUB, 4 random labels; 5 the wrong classes random labels draws."""
    HELD_OUT_AUDIT = 16
    """(part,): the held-out audit of a final fl model: 0 its G's and D's initial weights, 1 noise, labels and batch
    order of their training, 2 the perturbations drawn for the held-out images; 3, 4, 5 the same for the auditor
    of the validation split."""
    SISA_VALIDATION = 17
    """(): the training images a sisa run holds out as its validation split (`data.validation_fraction`)."""


ARITY = {
    Stream.CLIENT_TRAINING: 2,
    Stream.CLIENT_EVALUATION: 2,
    Stream.GAN_INIT: 1,
    Stream.GAN_TRAINING: 1,
    Stream.PROBES: 1,
    Stream.CLIENT_SELECTION: 1,
    Stream.SISA_INIT: 1,
    Stream.SISA_STAGE: 2,
    Stream.SISA_LAYOUT: 0,
    Stream.SISA_FORGET: 0,
    Stream.SISA_MEMBERSHIP: 1,
    Stream.BACKDOOR_POISON: 0,
    Stream.BACKDOOR_TRIGGER: 1,
    Stream.UNSHARDED_INIT: 0,
    Stream.UNSHARDED_TRAINING: 1,
    Stream.HELD_OUT_AUDIT: 1,
    Stream.SISA_VALIDATION: 0,
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
