"""The SISA layout: a seeded permutation of the N training indices cut into S near-equal shards, each cut
into R near-equal slices, and the map from forgotten indices to (shard, first affected slice).

Shards and slices are numbered from 0. Checkpoint k of a shard is its model after slices 0..k-1, so a point
in slice r is forgotten by retraining its shard from checkpoint r.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rayfed.errors import UserError
from rayfed.seeds import Stream, stream_seed


@dataclass(frozen=True)
class Layout:
    """slices[s][r]: the training indices in slice r of shard s (int64 arrays, in permutation order)."""

    num_points: int
    slices: tuple[tuple[np.ndarray, ...], ...]

    @property
    def num_shards(self) -> int:
        return len(self.slices)

    @property
    def num_slices(self) -> int:
        return len(self.slices[0])

    def shard_indices(self, shard: int) -> np.ndarray:
        """Every index of shard s, slice by slice."""
        return np.concatenate(self.slices[shard])

    def rows(self) -> list[dict[str, int]]:
        """layout.parquet rows: one per training index, sorted by index."""
        rows = [
            {"index": int(i), "shard": s, "slice": r}
            for s, shard in enumerate(self.slices)
            for r, part in enumerate(shard)
            for i in part
        ]
        return sorted(rows, key=lambda row: row["index"])

    def kept_slice_sizes(self, removed: Iterable[int]) -> list[list[int]]:
        """[shard][slice]: points left in each slice once `removed` are forgotten."""
        gone = np.fromiter((int(i) for i in removed), dtype=np.int64)
        return [[int((~np.isin(part, gone)).sum()) for part in shard] for shard in self.slices]

    def locate(self) -> tuple[np.ndarray, np.ndarray]:
        """(shard_of, slice_of): arrays of length N giving each index's shard and slice."""
        shard_of = np.empty(self.num_points, dtype=np.int64)
        slice_of = np.empty(self.num_points, dtype=np.int64)
        for s, shard in enumerate(self.slices):
            for r, part in enumerate(shard):
                shard_of[part], slice_of[part] = s, r
        return shard_of, slice_of


def make_layout(num_points: int, shards: int, slices: int, seed: int) -> Layout:
    """Permute range(N) (the SISA_LAYOUT stream of `seed`), split into S shards of size floor(N/S) or
    ceil(N/S), and each shard into R slices of near-equal size. UserError (naming sisa.shards / sisa.slices)
    when a shard or a slice would be empty."""
    if not 1 <= shards <= num_points:
        raise UserError(f"sisa.shards: must be between 1 and the training set size {num_points}, got {shards}")
    smallest_shard = num_points // shards
    if not 1 <= slices <= smallest_shard:
        raise UserError(
            f"sisa.slices: must be between 1 and the smallest shard size {smallest_shard} "
            f"(N={num_points}, S={shards}), got {slices}"
        )
    order = np.random.default_rng(stream_seed(seed, Stream.SISA_LAYOUT)).permutation(num_points).astype(np.int64)
    return Layout(num_points, tuple(tuple(np.array_split(shard, slices)) for shard in np.array_split(order, shards)))


def affected_shards(layout: Layout, forget: Iterable[int]) -> dict[int, int]:
    """{shard: first affected slice} for the shards that hold at least one forgotten index."""
    shard_of, slice_of = layout.locate()
    first: dict[int, int] = {}
    for index in forget:
        s, r = int(shard_of[index]), int(slice_of[index])
        first[s] = min(first.get(s, r), r)
    return dict(sorted(first.items()))


def check_indices(indices: list[int], num_points: int, key: str) -> list[int]:
    """UserError naming `key` for an index outside [0, N) or repeated; the indices otherwise."""
    bad = [i for i in indices if not 0 <= i < num_points]
    if bad:
        raise UserError(f"{key}: index {bad[0]} is out of range (the training set has {num_points} points)")
    if len(set(indices)) != len(indices):
        repeated = next(i for i in indices if indices.count(i) > 1)
        raise UserError(f"{key}: index {repeated} is repeated")
    return indices


def read_index_file(path: str | Path, key: str) -> list[int]:
    """Integers from a file, one per line or whitespace-separated; UserError naming the key and file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key}: file {path} does not exist")
    tokens = path.read_text().split()
    bad = next((t for t in tokens if not re.fullmatch(r"[+-]?\d+", t)), None)
    if bad is not None:
        raise UserError(f"{key}: file {path} does not parse: {bad!r} is not an integer index")
    return [int(t) for t in tokens]


def resolve_forget(forget: int | str | None, num_points: int, seed: int) -> list[int]:
    """unlearn.forget as a list of training indices: a count N draws N distinct indices once (SISA_FORGET stream)
    (the caller saves them as forget.txt, so every later audit uses the same points); a string is a file
    of indices. Checked for range and repeats."""
    if forget is None:
        return []
    if isinstance(forget, int):
        if forget > num_points:
            raise UserError(f"unlearn.forget: cannot forget {forget} of {num_points} training points")
        rng = np.random.default_rng(stream_seed(seed, Stream.SISA_FORGET))
        return sorted(int(i) for i in rng.choice(num_points, size=forget, replace=False))
    return check_indices(read_index_file(forget, "unlearn.forget"), num_points, "unlearn.forget")
