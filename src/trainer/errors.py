"""The exceptions the CLI turns into a one-line message and a non-zero exit: every exit code but 0
(done) and 1 (a bug: a traceback) is a `UserError` subclass here."""


class UserError(Exception):
    """Bad input the user can fix (config, data, paths, environment).

    The message is printed as one line; it names the bad input and what to do instead.
    """

    exit_code = 2


def override(assignment: str) -> str:
    """How to set a recipe key from the command line, for both ways of running a stage: `--set a=b`
    (python -m trainer) and `SET="a=b"` (make)."""
    return f'--set {assignment} (make: SET="{assignment}")'


class ConfigError(UserError):
    """An invalid recipe: unknown key, wrong type or broken invariant."""


class DataError(UserError):
    """A dataset that cannot be used: malformed row, missing column, nothing left after filters."""


# What trainer.resilience raises when a run cannot go on.
class RunLocked(UserError):
    exit_code = 3


class NonFinite(UserError):
    exit_code = 4


class OutOfMemory(UserError):
    exit_code = 5


class DiskFull(UserError):
    exit_code = 6


class Interrupted(UserError):
    """Stopped by a signal after saving a checkpoint; exit code 128 + signal number, as a shell reports it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
