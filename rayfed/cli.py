"""The `rayfed` command: `rayfed fl`, `rayfed sisa`, `rayfed sweep FILE`.

Bad input exits with status 2 and one line on stderr starting with `error:`; no traceback, no run
directory left behind. A run that stalls (no progress for resources.stall_timeout seconds) exits with status 3
and one `error:` line naming what it waited for; its run directory stays for --resume.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from rayfed.errors import RunStopped, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2, as every other bad input
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (keys as in rayfed.config)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set audit.gamma=[1,4] (value parsed as YAML)",
    )
    parser.add_argument("--out", help="run directory (default: a new one under runs/)")
    parser.add_argument("--address", help="Ray cluster address (e.g. auto); default: RAY_ADDRESS or a local Ray")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rayfed", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    fl = sub.add_parser("fl", help="FedAvg vs Fed-AuditGAN (default: the notebook's experiment on digits)")
    _common(fl)
    fl.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted `rayfed fl` run to fl.rounds")
    sisa = sub.add_parser("sisa", help="SISA training, unlearning and audits (default: digits, S=5, R=5)")
    _common(sisa)
    sisa.add_argument("--resume", metavar="RUN_DIR", help="finish a killed `rayfed sisa` run in its own directory")
    sweep = sub.add_parser("sweep", help="a Ray Tune sweep described by a YAML sweep file")
    sweep.add_argument("file", help="sweep file (see tune_configs/)")
    _common(sweep)
    return parser


def _address_overrides(args: argparse.Namespace) -> list[str]:
    return list(args.overrides) + ([f"resources.address={args.address}"] if args.address else [])


def run(args: argparse.Namespace) -> int:
    from rayfed.config import load_config
    from rayfed.results import run_directory

    overrides = _address_overrides(args)
    if getattr(args, "resume", None) and args.out is not None:
        raise UserError(f"--out {args.out}: a resumed run stays in its own directory, {args.resume}")
    if args.command == "sweep":
        from rayfed.tune.sweep import run_sweep_file

        run_sweep_file(args.file, overrides, args.out, args.config)
        return 0
    if args.command == "fl" and args.resume:
        from rayfed.engine.fl_run import resume_fl

        resume_fl(args.resume, args.config, overrides)
        return 0
    if args.command == "sisa" and args.resume:
        from rayfed.engine.sisa_run import resume_sisa

        resume_sisa(args.resume, args.config, overrides)
        return 0
    config = load_config(args.config, overrides)
    with run_directory(args.out, args.command) as run_dir:
        if args.command == "fl":
            from rayfed.engine.fl_run import run_fl

            run_fl(config, run_dir)
        else:
            from rayfed.engine.sisa_run import run_sisa

            run_sisa(config, run_dir)
        print(f"results in {run_dir.path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rayfed` command."""
    # rayfed's own progress at RAYFED_LOG (INFO); other libraries' INFO lines (matplotlib's first-use font cache,
    # ...) stay out of the one-line errors and the run's log.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("rayfed").setLevel(os.environ.get("RAYFED_LOG", "INFO"))
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except RunStopped as exc:  # stalled, or its actors lost: the run directory stays, for --resume
        sys.stderr.write(f"error: {exc}\n")
        return 3
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
