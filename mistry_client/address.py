"""Where mistryd is: `--host` takes a host name or address, `host:port`, or an http(s) URL."""

from __future__ import annotations

from collections import namedtuple
from urllib.parse import urlsplit

SCHEMES = ("http", "https")
FORMS = "a host (myserver), host:port (myserver:8462) or a URL (http://myserver:8462)"


class ServerAddress(namedtuple("ServerAddress", "scheme host port")):
    # scheme: str; host: str, without brackets, also for IPv6 (rsync and scp take it as it is);
    # port: int
    __slots__ = ()

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_address(text: str, default_port: int, default_scheme: str = "http") -> ServerAddress:
    """The server `text` names. A port in `text` wins over `default_port`, a scheme over
    `default_scheme`. ValueError says what is wrong and which forms work."""
    value = text.strip()
    if not value:
        raise ValueError(f"no host given; use {FORMS}")
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = default_scheme, value
        if value.count(":") > 1 and not value.startswith("["):  # a bare IPv6 address: ::1
            return ServerAddress(scheme, value, default_port)
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"{text!r} has the scheme {scheme!r}; mistryd speaks http:// or https://")
    parts = urlsplit(f"{scheme}://{rest}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{text!r} has a user name in it; give a token with --token instead")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{text!r} has a path after the host; use {FORMS}")
    if not parts.hostname:
        raise ValueError(f"{text!r} has no host name; use {FORMS}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ValueError(f"{text!r} has a bad port; a port is a number from 1 to 65535, "
                         "as in myserver:8462")
    return ServerAddress(scheme, parts.hostname, port or default_port)
