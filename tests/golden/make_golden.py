"""Writes one set of the golden tables that tests/test_golden_tables.py compares every later run against.

Float kernels differ between CPUs (instruction sets, cache-dependent blocking), and training turns a last-bit
difference into a different accuracy within a few steps, so each kind of machine has its own set; a run
passes when it matches one set exactly (to float32 rounding). The sets:

    set-1   the first development machine, 2026-12-01 (the one CI ran on that day)
    set-2   a 2-vCPU AMD EPYC with AVX2 only, 2026-12-02
    set-3   a 2-vCPU AMD EPYC with AVX-512, 2026-12-02 (Fed-AuditGAN's bias 2e-5 relative from set-2's)
    set-4   a 2-vCPU AMD EPYC with AVX-512 (Zen 4: family 25, model 17), 2026-12-02 evening: set-3 but for
            sisa membership's lr_cv_accuracy (0.45 for 0.475 twice: one of 40 losses on the other side of the
            logistic regression's threshold); the cause, CPU model or BLAS kernel, was not pinned down

A refactor must leave every set alone. A change that is meant to move the numbers (a new seed stream, a fixed
defect) says so in its commit and rewrites the set of the machine it runs on; a set it cannot rewrite there
(no such machine) is deleted in the same commit:

    python tests/golden/make_golden.py set-2
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from golden_runs import GOLDEN_TABLES, run_golden  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("set", help="the set's folder under tests/golden (see this file's docstring)")
    target = HERE / parser.parse_args().set
    target.mkdir(exist_ok=True)

    import ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, configure_logging=False)
    with tempfile.TemporaryDirectory() as tmp:
        for command, tables in GOLDEN_TABLES.items():
            out = run_golden(command, Path(tmp))
            for table in tables:
                shutil.copy(out / table, target / f"{command}_{table}")
                print("wrote", target / f"{command}_{table}")
    ray.shutdown()


if __name__ == "__main__":
    main()
