"""The answers a webhook gets when it cannot be built, in Mixmaster's words."""

from __future__ import annotations

from ..errors import MistryError, Unprocessable


class PushRefused(Unprocessable):
    """422: the payload is well-formed but cannot be built (`Unknown project`, `Not set up to
    build <branch>`, ...). The message is Mixmaster's, as its users' scripts expect it."""


class NotSigned(MistryError):
    """401: the repository has a secret and the request did not prove it (or the server has
    tokens and the request had neither a token nor a repository's secret)."""

    status = 401


class RepositoryUnreachable(MistryError):
    """502: `git ls-remote` could not resolve the pushed branch's head."""

    status = 502
