"""The exceptions that the CLI turns into one `error:` line: bad input (status 2) and a run that cannot go on
(status 3: stalled, or its actors lost)."""


class UserError(Exception):
    """Bad input from the user: a config key, a value, a file. The message names what is wrong."""


class RunStopped(Exception):
    """A run that cannot go on; the message says why. The run directory is kept: --resume continues from its last
    checkpoint (with fresh actors)."""


class RunStalled(RunStopped):
    """A run made no progress for resources.stall_timeout seconds. The message names what it waited for."""


class ActorsLost(RunStopped):
    """An actor (a client's, an audit server) died with no restarts left (fl.max_retries), so the round cannot
    finish (a dead client actor's updates can be dropped; its evaluations and a server's work cannot)."""
