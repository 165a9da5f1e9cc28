"""Run directories, Parquet tables (written atomically) and optional wandb tracking."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from rayfed.config import Config
from rayfed.errors import UserError


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same directory, then rename: never a half-written file. The file
    gets the mode a plain open() gives (0o666 less the umask), so teammates on a shared filesystem can read it."""
    tmp = str(path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp"))
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class RunDirectory:
    """One run's output folder."""

    def __init__(self, path: Path):
        self.path = path

    def file(self, name: str) -> Path:
        """Absolute path of a file in the run directory."""
        return self.path / name

    def write_config(self, config: Config) -> None:
        """config.yaml: the resolved config."""
        self.write_text("config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))

    def write_text(self, name: str, text: str) -> None:
        _atomic_write(self.file(name), lambda tmp: Path(tmp).write_text(text))

    def write_table(self, name: str, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> None:
        """A Parquet table from a list of row dicts (pandas reads it with pd.read_parquet)."""
        table = pa.Table.from_pylist(rows, schema=schema)
        _atomic_write(self.file(name), lambda tmp: pq.write_table(table, tmp))

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        """A torch state dict (load with torch.load(..., weights_only=True))."""
        _atomic_write(self.file(name), lambda tmp: torch.save(state, tmp))


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a Parquet table; UserError naming the file when it is missing or unreadable."""
    try:
        return pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{path} is not a readable Parquet table ({' '.join(str(exc).split())[:120]})") from None


def default_run_path(command: str) -> Path:
    """runs/<command>-<YYYYmmdd-HHMMSS>[-n], a new directory name."""
    base = Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _empty(path: Path) -> None:
    """Remove everything in the directory path, keeping the directory."""
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


@contextmanager
def run_directory(out: str | Path | None, command: str) -> Iterator[RunDirectory]:
    """Create the run directory (absolute path); if the run stops on a UserError, remove it again, or empty it
    again when it was an existing empty directory, so that bad input leaves nothing behind. An existing
    non-empty --out is refused rather than overwritten."""
    path = (Path(out) if out is not None else default_run_path(command)).resolve()
    try:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UserError(f"--out {path} already exists and is not empty")
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the run directory {path}: {exc.strerror or exc}") from None
    try:
        yield RunDirectory(path)
    except UserError:
        if created:
            shutil.rmtree(path, ignore_errors=True)
        else:
            _empty(path)
        raise


class Tracker:
    """wandb when `tracking.wandb` is offline or online; every call a no-op when disabled."""

    def __init__(self, config: Config, name: str, run_dir: Path, group: str | None = None):
        self.run = None
        if config.tracking.wandb == "disabled":
            return
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=config.tracking.project,
            entity=config.tracking.entity,
            name=name,
            group=group,
            mode=config.tracking.wandb,
            dir=str(run_dir),
            config=config.to_dict(),
            reinit="create_new",
        )

    def log(self, data: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(data)

    def log_image(self, key: str, path: Path) -> None:
        if self.run is not None:
            self.run.log({key: self._wandb.Image(str(path))})

    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None:
        if self.run is not None and rows:
            columns = list(rows[0])
            self.run.log({key: self._wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
