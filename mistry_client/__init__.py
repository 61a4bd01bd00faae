"""The mistry client: the `mistry` command and a small Python API.

    from mistry_client import Client
    client = Client("127.0.0.1", 8462)
    info = client.build("hello", params={"ref": "main"}, timeout=600)
    if info["ExitCode"] == 0:
        client.fetch(info, "out/")
"""

from typing import TYPE_CHECKING

from .errors import BuildTimeout, ClientError, NotMistryd, ServerError, TransferError, Unreachable

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
