"""Errors caused by the user's input, as opposed to bugs in trilora."""

import signal


class UserError(Exception):
    """Bad input (a path, a file, an option). The CLI prints the message on one line and exits with 2.

    The message says what is wrong and what to do about it.
    """


class Interrupted(Exception):
    """Ctrl-C, SIGTERM or SIGHUP stopped a run; the message says what was saved. The CLI exits with
    128 + the signal's number (130, 143, 129), as a shell reports a process that signal ended."""

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.signum = signum


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP outside the training loop: handled as Ctrl-C is (the CLI's handlers)."""

    def __init__(self, signum: int):
        super().__init__()
        self.signum = signum


def signal_name(signum: int) -> str:
    """How a stop is reported: "interrupted" for Ctrl-C, else the signal's name."""

    return "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"


def one_line(message: str) -> str:
    """A message on one line whatever it quotes: control characters (a newline in a file name or a
    TOML key) are shown escaped, as Python writes them."""
    return "".join(repr(c)[1:-1] if c.isprintable() is False and c != " " else c for c in str(message))
