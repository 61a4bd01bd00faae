"""Whether a webhook request proves its repository's secret, each forge in its own way:
Gitea `X-Gitea-Signature` (hex HMAC-SHA256 of the body), GitHub `X-Hub-Signature-256`
(`sha256=` + the same), GitLab `X-Gitlab-Token` (the secret itself), and for Mixmaster's `POST /`
the Gitea header or `Authorization: Bearer <secret>`. Every comparison takes constant time."""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol


class Headers(Protocol):
    """A request's headers (Flask's, or a dict in tests)."""

    def get(self, key: str, /) -> str | None: ...


def hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _same(presented: str | None, expected: str) -> bool:
    if presented is None:
        return False
    return hmac.compare_digest(presented.strip().encode("utf-8", "surrogateescape"),
                               expected.encode("utf-8"))


def gitea_signed(secret: str, body: bytes, headers: Headers) -> bool:
    return _same(_lower(headers.get("X-Gitea-Signature")), hmac_hex(secret, body))


def github_signed(secret: str, body: bytes, headers: Headers) -> bool:
    return _same(_lower(headers.get("X-Hub-Signature-256")), "sha256=" + hmac_hex(secret, body))


def gitlab_signed(secret: str, body: bytes, headers: Headers) -> bool:
    return _same(headers.get("X-Gitlab-Token"), secret)


def bearer_signed(secret: str, body: bytes, headers: Headers) -> bool:
    return _same(bearer(headers.get("Authorization")), secret)


def lightweight_signed(secret: str, body: bytes, headers: Headers) -> bool:
    """`POST /`: the Gitea signature or the secret as a bearer token (both are checked, so the
    time taken does not tell which one was tried)."""
    signed = gitea_signed(secret, body, headers)
    return bearer_signed(secret, body, headers) | signed


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, as the client sent its bytes."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip().encode("latin-1", "replace").decode("utf-8", "surrogateescape")


def _lower(value: str | None) -> str | None:
    return value.lower() if value is not None else None


SIGNED_BY = {"": lightweight_signed, "gitea": gitea_signed, "github": github_signed,
             "gitlab": gitlab_signed}
