"""The exceptions that the CLI turns into one `error:` line: bad input (status 2) and a stalled run (status 3)."""


class UserError(Exception):
    """Bad input from the user: a config key, a value, a file. The message names what is wrong."""


class RunStalled(Exception):
    """A run made no progress for resources.stall_timeout seconds. The message names what it waited for; the run
    directory is kept (its last checkpoint resumes with --resume)."""
