"""Errors a user can cause (a path, a value, a shape).

The CLI turns a `UserInputError` into a one-line message and exit code 2, never a traceback.
"""


class UserInputError(ValueError):
    """A problem with what the user passed; the message is shown as is, on one line."""
