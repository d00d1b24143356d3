"""The one exception type the command line turns into a clean one-line error."""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input from the user: a file, a line in it, or an option.

    ``str(err)`` is the whole message, already naming the file and line (``path:12: problem``)
    or the option's field (``beta: must be > 0``; only the CLI shows the flag, ``--beta``). The CLI
    prints it on one line and exits with status 2.
    """

    @classmethod
    def at(cls, path, line: int | None, problem: str) -> "UserInputError":
        where = f"{path}:{line}" if line is not None else f"{path}"
        return cls(f"{where}: {problem}")


def require(checks) -> None:
    """Raise :class:`UserInputError` with the message of the first failed check.

    ``checks``: ``(ok, "field: problem")`` pairs; options are checked on their dataclasses, which name
    the field (``top_k: must be > 0, got 0``); the command line shows the flag instead."""
    for ok, message in checks:
        if not ok:
            raise UserInputError(message)


def positive(value, *, optional: bool = False) -> bool:
    """A finite number > 0 (or None where ``optional``)."""
    if value is None:
        return optional
    return value > 0 and value != float("inf") and value == value
