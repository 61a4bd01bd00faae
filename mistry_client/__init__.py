"""The mistry client: the `mistry` command and a small Python API.

    from mistry_client import Client
    client = Client("127.0.0.1", 8462)
    info = client.build("hello", params={"ref": "main"}, timeout=600)
    if info["ExitCode"] == 0:
        client.fetch(info, "out/")
"""

from .errors import BuildTimeout, ClientError, NotMistryd, ServerError, TransferError, Unreachable

# `TYPE_CHECKING = False` in the client's modules is typing.TYPE_CHECKING (mypy reads it so)
# without importing typing at run time: `typing` costs several ms of every `mistry` command's
# start, and a cached build is mostly start-up (docs/performance.md).
TYPE_CHECKING = False

__all__ = ["BuildTimeout", "Client", "ClientError", "NotMistryd", "ServerError", "Submitted",
           "TransferError", "Unreachable"]

if TYPE_CHECKING:
    from .api import Client, Submitted


def __getattr__(name: str):
    # the API (and its HTTP) loads on first use: `import mistry_client.errors` stays light
    if name in ("Client", "Submitted"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
