"""The one exception type the command line turns into a one-line message."""


class UserError(Exception):
    """Bad input from the user (a file, an option): the CLI prints it as one line, exit 2."""
