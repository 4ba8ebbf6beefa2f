"""Errors caused by the user's input, as opposed to bugs in trilora."""


class UserError(Exception):
    """Bad input (a path, a file, an option). The CLI prints the message on one line and exits with 2.

    The message says what is wrong and what to do about it.
    """


class Interrupted(Exception):
    """The user pressed Ctrl-C; the message says what was saved. The CLI exits with 130."""
