"""Run `rayfed` command lines as `python -m rayfed` runs them, without paying Python's and torch's start-up for
each one (about 2.5 s a command line on the 2-core CI machine, a few minutes over the suite's bad-input tests).

One server process imports rayfed once; for every command line it forks a child, which points its stdout and
stderr at files, takes the test's working directory and environment, calls `rayfed.cli.main` exactly as
`rayfed/__main__.py` does and exits with its status. A test sees a real process's exit status and output; only
the interpreter's start-up and the imports are shared. Nothing runs in the pytest process, so a config that sets
torch's global state, logging or warnings cannot leak into other tests. Tests of the entry point itself
(`python -m rayfed`, argparse's errors, first-import behaviour) still start it as a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
"""The environment the tests give `rayfed` (wandb off; warnings off, as a user's terminal would not show them)."""


class RayfedCli:
    """A running fork server; `run` is a drop-in for `subprocess.run([python, -m, rayfed, ...])`."""

    def __init__(self) -> None:
        self._outputs = Path(tempfile.mkdtemp(prefix="rayfed-cli-"))
        self._server = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=ENV,
            text=True,
            start_new_session=True,
        )
        self._count = 0

    def run(
        self, *args: str, cwd: Path | str | None = None, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        """`rayfed *args` in cwd (default: this directory) with env (default: ENV); its status, stdout, stderr."""
        self._count += 1
        stdout, stderr = self._outputs / f"{self._count}.out", self._outputs / f"{self._count}.err"
        request = {
            "args": list(args),
            "cwd": str(cwd or os.getcwd()),
            "env": dict(env or ENV),
            "stdout": str(stdout),
            "stderr": str(stderr),
        }
        self._server.stdin.write(json.dumps(request) + "\n")
        self._server.stdin.flush()
        ready, _, _ = select.select([self._server.stdout], [], [], timeout)
        if not ready:
            self.close()
            raise subprocess.TimeoutExpired(["rayfed", *args], timeout)
        reply = self._server.stdout.readline()
        if not reply:
            raise RuntimeError("the rayfed fork server died")
        result = subprocess.CompletedProcess(
            ["rayfed", *args], json.loads(reply)["returncode"], stdout.read_text(), stderr.read_text()
        )
        stdout.unlink()
        stderr.unlink()
        return result

    def close(self) -> None:
        """Stop the server and any child still running (a command line that timed out): their process group; remove
        the output files' folder."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._server.pid, signal.SIGKILL)
        self._server.wait()
        shutil.rmtree(self._outputs, ignore_errors=True)


def _run_child(request: dict) -> None:
    """In the forked child: become the command line of `request`, run it, exit with its status."""
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # not the server's request pipe
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = ["rayfed", *request["args"]]
    from rayfed.cli import main

    try:
        status = main(request["args"])
    except SystemExit as exc:  # argparse's errors, as `python -m rayfed` exits with them
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # an uncaught exception: Python's traceback and status 1
        import traceback

        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def serve() -> None:
    """The server: import rayfed's command-line modules once, then fork one child per request line on stdin."""
    import rayfed.cli  # noqa: F401
    import rayfed.data.datasets  # noqa: F401
    import rayfed.engine.fl_run  # noqa: F401
    import rayfed.engine.sisa_run  # noqa: F401

    replies = os.fdopen(os.dup(1), "w")  # stdout becomes the children's; replies go through a copy of it
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:
            _run_child(request)
        _, status = os.waitpid(child, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()
