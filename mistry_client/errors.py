"""Client errors; each knows the `mistry` exit code it ends with (documented in docs/client.md)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator

from .wire import NotHttp, WireError

EXIT_OK = 0
EXIT_BUILD_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3  # the server answered with an error: unknown project, overloaded, bad request
EXIT_UNREACHABLE = 4  # no mistryd answers there: refused, unknown host, no answer, another service
EXIT_TIMEOUT = 5  # --timeout passed before the build finished
EXIT_TRANSFER = 6  # the build succeeded but its artifacts could not be fetched or verified
EXIT_UNFINISHED = 7  # `mistry status`: the build is queued or running (1 is for a failed one)
EXIT_BROKEN_PIPE = 141  # stdout was closed by its reader (`| head`), as a shell reports SIGPIPE


class ClientError(Exception):
    exit_code = EXIT_REFUSED

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ServerError(ClientError):
    """The server answered with an HTTP error; `message` is what upstream's client printed."""

    def __init__(self, status: int, error: str, retry_after: float | None = None):
        self.status = status
        self.retry_after = retry_after  # a busy server's Retry-After (503), in seconds
        self.error = " ".join(error.splitlines())  # one line, whatever the server sent
        if status == 404 and self.error.startswith("Unknown project"):
            message = self.error
        else:
            message = f"(error: {status}) {self.error}"
        super().__init__(message)


class AccessDenied(ServerError):
    """401 (no token, or one the server does not know) or 403 (the token's role is too low)."""

    def __init__(self, status: int, error: str, base: str, token_given: bool):
        super().__init__(status, error)
        error = self.error
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


class NotMistryd(ClientError):
    """Something answered, but not as mistryd does (another service on that port, a proxy's error
    page): for the user it is the same mistake as a wrong port. Not worth asking again."""

    exit_code = EXIT_UNREACHABLE


class BuildTimeout(ClientError):
    exit_code = EXIT_TIMEOUT


class TransferError(ClientError):
    exit_code = EXIT_TRANSFER


BROKEN = "the connection broke"


def connection_problem(error: BaseException) -> str:
    """What went wrong on the wire, in a few words, from a WireError (or any exception) and the
    exceptions it wraps (the most telling one wins: a broken connection wraps its reset)."""
    causes = list(_causes(error))
    for test, text in _problems():
        if any(test(cause) for cause in causes):
            return text
    ssl = sys.modules.get("ssl")  # loaded when the server is https
    for cause in causes:
        if ssl is not None and isinstance(cause, ssl.SSLError):
            return f"TLS failed ({cause.reason or cause}); is the server really https?"
    for cause in causes:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[:1].lower() + cause.strerror[1:]
    return type(error).__name__


NOT_HTTP = "the answer is not HTTP"


def _problems() -> list[tuple[Callable[[BaseException], bool], str]]:
    return [
        (lambda e: isinstance(e, socket.gaierror), "the host name does not resolve"),
        (lambda e: isinstance(e, ConnectionRefusedError), "connection refused"),
        (lambda e: isinstance(e, NotHttp), NOT_HTTP),
        # (the wire's CutShort and NoAnswer are ConnectionResetErrors)
        (lambda e: isinstance(e, ConnectionResetError | ConnectionAbortedError | BrokenPipeError),
         BROKEN),
        (lambda e: isinstance(e, TimeoutError), "no answer in time"),
    ]


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and what it wraps: causes, contexts, urllib3's `reason`, exceptions in `args`."""
    todo, seen = [error], set()
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        wrapped = [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
        todo += [w for w in wrapped if isinstance(w, BaseException)]


def exit_code_of(run: Callable[[], object]) -> int | None:
    """Runs a command's work, and ends what it raises as one: a ClientError with its message (on
    stderr) and exit code, a stdout its reader closed (`mistry logs ... | head`) as SIGPIPE
    would, a connection error nothing else caught as one line. None when it ran to its end."""
    try:
        run()
    except ClientError as e:
        print(e.message, file=sys.stderr, flush=True)
        return e.exit_code
    except BrokenPipeError:  # the reader has what it wanted
        # stdout is gone: point it at /dev/null so the interpreter's final flush is quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except WireError as e:  # a read the client did not wrap: still one line
        print(f"lost the connection to mistryd: {connection_problem(e)}", file=sys.stderr,
              flush=True)
        return EXIT_UNREACHABLE
    return None
