"""Refactors leave every number where it was: two small runs against tables written before the change
(tests/golden/<set>/, written by make_golden.py, one set per kind of machine; only a commit that means to move
numbers rewrites them)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from golden_runs import GOLDEN_TABLES, run_golden

pytestmark = pytest.mark.slow
GOLDEN = Path(__file__).resolve().parent / "golden"
SETS = sorted(p for p in GOLDEN.iterdir() if p.is_dir() and not p.name.startswith("__"))


def mismatch(out: Path, golden_set: Path, command: str) -> str | None:
    """Why the run in `out` differs from `golden_set`'s tables of `command` (first difference), or None."""
    for table in GOLDEN_TABLES[command]:
        golden = pd.read_parquet(golden_set / f"{command}_{table}")
        now = pd.read_parquet(out / table)
        columns = [c for c in golden.columns if "seconds" not in c]  # wall times vary
        missing = [c for c in columns if c not in now.columns]
        if missing:
            return f"{table} lost columns {missing}"
        try:
            pd.testing.assert_frame_equal(
                now[columns].reset_index(drop=True),
                golden[columns].reset_index(drop=True),
                check_exact=False,
                rtol=1e-5,
                atol=1e-8,
                obj=f"{command} {table}",
            )
        except AssertionError as exc:
            return " ".join(str(exc).split())[:400]
    return None


def test_every_golden_set_is_complete():
    assert SETS, "no golden set under tests/golden"
    for golden_set in SETS:
        for command, tables in GOLDEN_TABLES.items():
            for table in tables:
                assert (golden_set / f"{command}_{table}").is_file(), f"{golden_set.name} lacks {command}_{table}"


@pytest.mark.parametrize("command", sorted(GOLDEN_TABLES))
def test_tables_match_a_golden_run(command, ray_session, tmp_path):
    out = run_golden(command, tmp_path)
    differences = {s.name: mismatch(out, s, command) for s in SETS}
    assert any(why is None for why in differences.values()), "matches no golden set: " + "; ".join(
        f"{name}: {why}" for name, why in differences.items()
    )
