"""Writes the golden tables that tests/test_golden_tables.py compares every later run against.

Run it only where a change is meant to move the numbers (a new seed stream, a fixed defect), say so in the
commit, and keep refactors honest by leaving these files alone:

    python tests/golden/make_golden.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from golden_runs import GOLDEN_TABLES, run_golden  # noqa: E402


def main() -> None:
    import ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, configure_logging=False)
    with tempfile.TemporaryDirectory() as tmp:
        for command, tables in GOLDEN_TABLES.items():
            out = run_golden(command, Path(tmp))
            for table in tables:
                shutil.copy(out / table, HERE / f"{command}_{table}")
                print("wrote", HERE / f"{command}_{table}")
    ray.shutdown()


if __name__ == "__main__":
    main()
