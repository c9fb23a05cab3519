"""The one exception type for user mistakes.

Anything the user can fix (a bad file, an unknown task, a wrong option) raises `UserError` with a single line
that names the file, line or task and says what to do. The CLI prints it as `error: ...` and exits with code 2;
every other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input; its message is one line, shown without a traceback (exit code 2)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")))
