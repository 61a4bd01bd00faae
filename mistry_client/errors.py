"""Client errors; each knows the `mistry` exit code it ends with (documented in docs/client.md)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_BUILD_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3  # the server answered with an error: unknown project, overloaded, bad request
EXIT_UNREACHABLE = 4  # no answer: connection refused, reset, DNS
EXIT_TIMEOUT = 5  # --timeout passed before the build finished
EXIT_TRANSFER = 6  # the build succeeded but its artifacts could not be fetched or verified


class ClientError(Exception):
    exit_code = EXIT_REFUSED

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ServerError(ClientError):
    """The server answered with an HTTP error; `message` is what upstream's client printed."""

    def __init__(self, status: int, error: str):
        self.status = status
        self.error = error
        if status == 404 and error.startswith("Unknown project"):
            message = error
        else:
            message = f"(error: {status}) {error}"
        super().__init__(message)


class AccessDenied(ServerError):
    """401 (no token, or one the server does not know) or 403 (the token's role is too low)."""

    def __init__(self, status: int, error: str, base: str, token_given: bool):
        super().__init__(status, error)
        if status == 403:
            self.message = f"mistryd at {base} refused the token: {error}"
        elif token_given:
            self.message = (f"mistryd at {base} does not accept the token given (--token or "
                            f"MISTRY_TOKEN); check it against the server's `tokens` ({error})")
        else:
            self.message = (f"mistryd at {base} needs a token: pass --token TOKEN or set "
                            f"MISTRY_TOKEN ({error})")
        self.args = (self.message,)


class Unreachable(ClientError):
    exit_code = EXIT_UNREACHABLE


class BuildTimeout(ClientError):
    exit_code = EXIT_TIMEOUT


class TransferError(ClientError):
    exit_code = EXIT_TRANSFER
