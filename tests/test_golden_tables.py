"""Refactors leave every number where it was: two small runs against tables written before the change
(tests/golden/, written by make_golden.py; only a commit that means to move numbers rewrites them)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from golden_runs import GOLDEN_TABLES, run_golden

pytestmark = pytest.mark.slow
GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.mark.parametrize("command", sorted(GOLDEN_TABLES))
def test_tables_match_the_golden_run(command, ray_session, tmp_path):
    out = run_golden(command, tmp_path)
    for table in GOLDEN_TABLES[command]:
        golden = pd.read_parquet(GOLDEN / f"{command}_{table}")
        now = pd.read_parquet(out / table)
        columns = [c for c in golden.columns if "seconds" not in c]  # wall times vary
        missing = [c for c in columns if c not in now.columns]
        assert not missing, f"{table} lost columns {missing}"
        pd.testing.assert_frame_equal(
            now[columns].reset_index(drop=True),
            golden[columns].reset_index(drop=True),
            check_exact=False,
            rtol=1e-5,
            atol=1e-8,
            obj=f"{command} {table}",
        )
