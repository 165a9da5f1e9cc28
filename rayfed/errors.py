"""The one exception type that the CLI turns into an `error:` line and exit status 2."""


class UserError(Exception):
    """Bad input from the user: a config key, a value, a file. The message names what is wrong."""
