"""The one exception type a command turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user (a flag, a file, a directory): reported in one line."""


def describe_os_error(e: OSError) -> str:
    """One line for a stage-level OSError (full disk, I/O error, permissions)."""
    where = f"{e.filename}: " if e.filename else ""
    what = e.strerror or str(e)
    return f"{where}{what}; the stage stopped and resumes when run again once this is fixed"
