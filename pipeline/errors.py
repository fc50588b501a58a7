"""The one error type for mistakes the user can fix."""


class UserError(Exception):
    """A wrong config value, input file or storage location.

    Entry points print the message without a traceback and exit with code 2, so the
    message must name the value and say how to fix it.
    """
