"""The one exception type the command line turns into a one-line message."""


class UserError(Exception):
    """Bad input from the user (a file, an option): the CLI prints it as one line, exit 2."""


def one_line(err: BaseException, limit: int = 160) -> str:
    """An exception's message on one line (white space folded), cut to `limit` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
