"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


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
