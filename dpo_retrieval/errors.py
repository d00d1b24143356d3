"""The one exception type the command line turns into a clean one-line error."""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input from the user: a file, a line in it, or an option.

    ``str(err)`` is the whole message, already naming the file and line (``path:12: problem``)
    or the option (``--beta: must be > 0``). The CLI prints it on one line and exits with status 2.
    """

    @classmethod
    def at(cls, path, line: int | None, problem: str) -> "UserInputError":
        where = f"{path}:{line}" if line is not None else f"{path}"
        return cls(f"{where}: {problem}")
