"""Run any `rayfed` command on a Ray cluster: `ray submit` copies this one script to the head node and runs it
with Python, so it only moves into the project that cluster.yaml mounts and calls the `rayfed` CLI.

    ray submit cluster/cluster.yaml cluster/launch.py -- sweep tune_configs/fedaudit_gamma.yaml --address auto
    ray submit cluster/cluster.yaml cluster/launch.py -- fl --set fl.rounds=50 --address auto

Relative paths (sweep files, --config, --out) are read from the project folder: RAYFED_PROJECT, else
~/rayfed (the file_mounts target of cluster.yaml and local.yaml).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_ENV = "RAYFED_PROJECT"
DEFAULT_PROJECT = "~/rayfed"


def project_folder() -> Path:
    """The folder holding the project on the head node."""
    return Path(os.environ.get(PROJECT_ENV, DEFAULT_PROJECT)).expanduser()


def main(argv: list[str]) -> int:
    """cd into the project, then `rayfed ARGV` (exit status as the CLI's: 2 for bad input)."""
    folder = project_folder()
    if not folder.is_dir():
        sys.stderr.write(f"error: project folder {folder} does not exist (set {PROJECT_ENV})\n")
        return 2
    os.chdir(folder)
    from rayfed.cli import main as rayfed_main

    return rayfed_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
