"""The one exception type the command line turns into a one-line message."""


class UserError(Exception):
    """Bad input from the user (a file, an option): the CLI prints it as one line, exit 2."""


def one_line(err: BaseException, limit: int = 160) -> str:
    """An exception's message on one line (white space folded), cut to `limit` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Terminated(BaseException):
    """SIGTERM arrived (`timeout`, `docker stop`, a batch scheduler's time limit): the command
    stops where it is, its cleanup runs, the CLI exits 143. A BaseException, as Ctrl-C's
    KeyboardInterrupt, so that no `except Exception` on the way up swallows it."""
