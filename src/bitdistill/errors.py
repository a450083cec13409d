"""User-facing errors.

Every error a user can cause (a bad path, a corrupt directory, an unsupported model) is raised as a
`BitDistillError` whose message says what was wrong and what to do. The CLI prints these without a
traceback; anything else is a bug and keeps its traceback.
"""


class BitDistillError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""
