"""The package's user-facing error type."""


class RissoleError(Exception):
    """A problem with the user's input or environment, reported without a traceback by the CLI.

    Library code mostly raises the standard ValueError / IndexError / FileNotFoundError with a clear
    message; use RissoleError for problems that fit none of them (e.g. a requested backend that
    cannot run).
    """
