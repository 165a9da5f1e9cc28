"""Named seed streams: no two draws of a run share a seed, and a stream is the same draw every time."""

import numpy as np
import pytest

from rayfed.seeds import ARITY, Stream, stream_seed


def all_round_seeds(run_seed: int, round_index: int, num_clients: int) -> list[tuple[str, int]]:
    """Every seed one federated round draws, with its name."""
    seeds = [
        (s.name, stream_seed(run_seed, s, round_index))
        for s in (Stream.GAN_INIT, Stream.GAN_TRAINING, Stream.PROBES, Stream.CLIENT_SELECTION)
    ]
    for client in range(num_clients):
        seeds.append((f"train{client}", stream_seed(run_seed, Stream.CLIENT_TRAINING, round_index, client)))
        seeds.append((f"eval{client}", stream_seed(run_seed, Stream.CLIENT_EVALUATION, round_index, client)))
    return seeds


@pytest.mark.parametrize("round_index", [1, 2, 7])
def test_all_streams_of_a_round_are_distinct(round_index):
    seeds = all_round_seeds(42, round_index, num_clients=20)
    values = [v for _, v in seeds]
    assert len(set(values)) == len(values), [n for n, v in seeds if values.count(v) > 1]


def test_named_streams_separate_what_positional_seeds_merged():
    # the scheme this replaces seeded client c of round r with (seed, r, c) and the GAN's training with
    # (seed, r, 3): client 3 trained on the GAN's stream. Named streams keep them apart.
    assert stream_seed(42, Stream.CLIENT_TRAINING, 1, 3) != stream_seed(42, Stream.GAN_TRAINING, 1)
    # and why every stream has a fixed arity: SeedSequence pads short entropy with zeros
    padded = [int(np.random.SeedSequence(w).generate_state(1)[0]) for w in ([42, 1, 3], [42, 1, 3, 0])]
    assert padded[0] == padded[1]


def test_streams_and_sisa_draws_distinct_across_rounds_shards_stages_and_audits():
    seeds = [stream_seed(0, Stream.SISA_STAGE, shard, stage) for shard in range(20) for stage in range(20)]
    seeds += [stream_seed(0, Stream.SISA_INIT, shard) for shard in range(20)]
    seeds += [
        stream_seed(0, s)
        for s in (Stream.SISA_LAYOUT, Stream.SISA_FORGET, Stream.BACKDOOR_POISON, Stream.UNSHARDED_INIT)
    ]
    seeds += [
        stream_seed(0, s, part)
        for s in (Stream.SISA_MEMBERSHIP, Stream.BACKDOOR_TRIGGER, Stream.UNSHARDED_TRAINING, Stream.HELD_OUT_AUDIT)
        for part in range(4)
    ]
    seeds += [v for r in range(1, 30) for _, v in all_round_seeds(0, r, 10)]
    assert len(set(seeds)) == len(seeds)


def test_same_draw_same_seed_other_run_other_seed():
    assert stream_seed(5, Stream.PROBES, 3) == stream_seed(5, Stream.PROBES, 3)
    assert stream_seed(5, Stream.PROBES, 3) != stream_seed(6, Stream.PROBES, 3)


def test_a_stream_takes_exactly_its_indices():
    assert set(ARITY) == set(Stream)
    with pytest.raises(ValueError, match="PROBES takes 1"):
        stream_seed(0, Stream.PROBES, 1, 0)  # would coincide with (1,) under SeedSequence's zero padding
    with pytest.raises(ValueError, match=">= 0"):
        stream_seed(0, Stream.CLIENT_TRAINING, 1, -1)
