"""The one exception type users see: a message that says what went wrong and what to do."""


class LookalikeError(RuntimeError):
    """An error caused by the user's input or environment, reported as one clear message."""
