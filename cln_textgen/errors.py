"""The error a user can cause and fix: printed as one line, exit code 2."""


class UserError(Exception):
    """A problem in the user's config, data, paths, labels or checkpoints.

    The message is one line that names the file (and line) or config key and
    says how to fix it.  The CLI prints it without a traceback and exits 2.
    """

    exit_code = 2


def where(path, line=None):
    """``path`` or ``path:line`` for messages."""
    return f"{path}:{line}" if line is not None else str(path)
