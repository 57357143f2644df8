"""The one exception type a command turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user (a flag, a file, a directory): reported in one line."""
