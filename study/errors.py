"""Errors a user can cause: the CLI turns them into one line on stderr and exit status 2."""


class UserError(Exception):
    """A bad value given by the user (path, fraction, model name, dataset layout).

    The message must be one line that names the bad value and says what would be valid.
    """


class DivergedError(RuntimeError):
    """Training produced a non-finite loss; the run is recorded as failed (or a trial pruned)."""


class WriteError(Exception):
    """Writing an output (results.csv, figures, the report, the decode cache) failed: a full disk,
    an I/O error. Not the user's input (exit status 1, one line); the store is left intact."""
