"""The mistry client: the `mistry` command and a small Python API.

    from mistry_client import Client
    client = Client("127.0.0.1", 8462)
    info = client.build("hello", params={"ref": "main"}, timeout=600)
    if info["ExitCode"] == 0:
        client.fetch(info, "out/")
"""

from .api import Client, Submitted
from .errors import BuildTimeout, ClientError, NotMistryd, ServerError, TransferError, Unreachable

__all__ = ["BuildTimeout", "Client", "ClientError", "NotMistryd", "ServerError", "Submitted",
           "TransferError", "Unreachable"]
