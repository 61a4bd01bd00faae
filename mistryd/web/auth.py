"""Access control: every request needs a role (read < build < admin), given by a bearer token.

One `before_request` hook decides for every endpoint, from the method and the URL rule alone, so
endpoints added later are covered the day they land: reads need `read`, `POST /jobs` needs
`build`, any other write (cancel, delete, ...) needs `admin`. A browser has no bearer header:
`/login` puts the token in an HttpOnly, SameSite=Strict cookie, which then counts as the token.
There is no `?token=` query parameter on purpose: URLs end up in proxy logs and browser history,
and the cookie already covers the browser's page loads and its EventSource.

With no tokens configured the server is open, as upstream. Tokens are compared in constant time
(every configured token, every time) and never appear in a log line or an error message.

Two checks run before the role check, whatever the tokens, because a browser can be made to send
requests from any web page: the Host must be one this server answers to (a DNS name that an
attacker points at 127.0.0.1 would otherwise read everything), and a write a browser sends from
another origin (`Origin` or `Sec-Fetch-Site` tells) is refused. Clients other than browsers (curl,
upstream's Go client, `mistry`) send neither header and are not affected.
"""

from __future__ import annotations

import fnmatch
import functools
import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from ..config import Config, Token
from ..errors import MistryError

bp = Blueprint("auth", __name__)

# `builder` (a remote builder's token: docs/distributed.md) is beside the ladder, not on it: it
# may use the /api/builder/ endpoints, which admin may use too, and nothing else
ROLE_RANK = {"builder": 0, "read": 1, "build": 2, "admin": 3}
BUILDER_PREFIX = "/api/builder/"
COOKIE = "mistryd_token"
COOKIE_MAX_AGE = 30 * 24 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Rules anyone may use: the login form, the API description, the liveness probe and the web
# view's static assets (none of them tells anything about builds).
PUBLIC_RULES = frozenset({"/login", "/logout", "/openapi.yaml", "/healthz", "/version",
                          "/static/<path:filename>"})
# Webhooks of push builds prove a repository's secret, which only their view can check (it
# also takes a token with role build in place of a secret): mistryd/web/push.py
WEBHOOK_RULES = frozenset({"/", "/gitea", "/github", "/gitlab"})


def required_role(method: str, rule: str | None) -> str | None:
    """The role a request needs (None: public). `rule` is the matched URL rule, None when no
    rule matched (a 404 or 405 to be); those need `read`, so an anonymous caller learns nothing."""
    if rule in PUBLIC_RULES or (method in ("POST", "PUT") and rule in WEBHOOK_RULES):
        return None
    if rule is not None and rule.startswith(BUILDER_PREFIX):
        return "builder"
    if method in SAFE_METHODS:
        return "read"
    if method == "POST" and rule in ("/jobs", "/jobs/verify", "/batches"):
        return "build"
    return "admin"  # every other write; unknown ones fail closed


def match_token(presented: str, tokens: tuple[Token, ...]) -> Token | None:
    """The configured token equal to `presented`, compared in constant time with all of them."""
    raw = presented.encode("utf-8", "surrogateescape")
    found = None
    for token in tokens:  # no early exit: the time taken does not tell which one matched
        if hmac.compare_digest(raw, token.token.encode("utf-8")):
            found = token
    return found


def listens_beyond_loopback(host: str) -> bool:
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return True


def startup_warning(config: Config) -> str | None:
    """What `mistryd` warns about at start-up when it is open to more than this machine."""
    if config.tokens or not listens_beyond_loopback(config.host):
        return None
    hosts = ("" if config.allowed_hosts or config.host not in WILDCARD_HOSTS else
             "; and set `allowed_hosts` to the names clients use, so that web pages cannot reach "
             "it through a name of their own (DNS rebinding)")
    return (f"no API tokens are configured and mistryd listens on {config.host}: anyone who can "
            "reach it may build and read everything; add `tokens` to the config "
            f"(see README, Access control){hosts}")


@dataclass(frozen=True)
class Credentials:
    presented: str | None  # the token as sent, or None when none was sent
    source: str  # "header", "cookie" or "none"


def _credentials() -> Credentials | str:
    """The request's token, or the problem with its Authorization header."""
    header = request.headers.get("Authorization")
    if header is not None:
        presented = bearer(header)
        if presented is None:
            return "the Authorization header must be 'Bearer <token>'"
        return Credentials(presented, "header")
    cookie = request.cookies.get(COOKIE)
    if cookie:
        return Credentials(cookie, "cookie")
    return Credentials(None, "none")


def bearer(header: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (as WSGI hands it over, latin-1);
    None when the header is not that."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip().encode("latin-1").decode("utf-8", "surrogateescape")  # the client's bytes


def _fix(role: str) -> str:
    return (f"send a token with role '{role}' or higher as 'Authorization: Bearer <token>' "
            "(mistry: --token or MISTRY_TOKEN; browsers: /login)")


def _unauthorized(message: str):
    if request.method == "GET" and _prefers_html():
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    response = jsonify(error=message)
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="mistryd"'
    return response


def _forbidden(message: str):
    response = jsonify(error=message)
    response.status_code = 403
    return response


def _prefers_html() -> bool:
    """A browser's page load (text/html over JSON); `*/*` alone, as curl sends, is not one."""
    accept = request.accept_mimetypes
    return accept["text/html"] > accept["application/json"]


def sees_host_paths() -> bool:
    """Whether this request may see absolute host paths (BuildInfo `Path`, which upstream's scp
    transport needs): on an open server (upstream-compatible) and for the build and admin roles;
    never for read-only tokens or anonymous readers."""
    config: Config = current_app.extensions["mistryd"].config
    return not config.tokens or getattr(g, "role", None) in ("build", "admin")


def check_access():
    """The before_request hook: None lets the request through, a response refuses it."""
    config: Config = current_app.extensions["mistryd"].config
    rule = request.url_rule.rule if request.url_rule is not None else None
    role = required_role(request.method, rule)
    if role is None or not config.tokens:
        return None
    creds = _credentials()
    what = f"{request.method} {rule or request.path}"
    if isinstance(creds, str):
        return _unauthorized(f"{creds}; {_fix(role)}")
    if creds.presented is None:
        if role == "read" and config.anonymous_read:
            return None
        return _unauthorized(f"{what} needs a token; {_fix(role)}")
    token = match_token(creds.presented, config.tokens)
    if token is None:
        if creds.source == "cookie":
            return _unauthorized(f"the login cookie holds an unknown token; log in again at "
                                 f"/login, or {_fix(role)}")
        return _unauthorized(f"unknown token; {_fix(role)}")
    g.role, g.token = token.role, token
    if role == "builder" and token.role not in ("builder", "admin"):
        return _forbidden(f"token '{token.name}' has role '{token.role}' but {what} is for "
                          "builders: use a token with role 'builder'")
    if role != "builder" and ROLE_RANK[token.role] < ROLE_RANK[role]:
        return _forbidden(f"token '{token.name}' has role '{token.role}' but {what} needs "
                          f"'{role}'; use a token with role '{role}' or higher")
    if creds.source == "cookie" and request.method not in SAFE_METHODS and not _same_origin():
        # SameSite=Strict stops other sites, not other ports of the same host: ask for Origin
        return _forbidden(f"{what} with the login cookie must come from this server's own pages "
                          "(the Origin header did not match); use 'Authorization: Bearer' instead")
    return None


class GroupRefused(MistryError):
    status = 403


def check_group(group: str) -> None:
    """A token limited to groups (config `tokens[].groups`, globs) may ask only for builds of
    those groups: GroupRefused (403) naming them otherwise. Tokens without `groups`, anonymous
    readers and open servers are not limited."""
    token: Token | None = getattr(g, "token", None)
    if token is None or may_ask_for(token, group):
        return
    assert token.groups is not None  # may_ask_for: a token without groups may ask for any
    asked = f"group {group!r}" if group else "a build without a group"
    raise GroupRefused(f"token '{token.name}' may only ask for groups matching "
                       f"{', '.join(repr(glob) for glob in token.groups)}, not {asked}; ask for "
                       "one of those groups, or use a token for this one")


def may_ask_for(token: Token, group: str) -> bool:
    return token.groups is None or any(fnmatch.fnmatchcase(group, glob) for glob in token.groups)


def lets_build_quietly(config: Config, headers: Mapping[str, str], group: str) -> bool:
    """Whether the checks above (host, origin, role, then check_group) would let a `POST /jobs`
    for `group` with these headers (waitress's: `HOST`, `SEC_FETCH_SITE`) through without a
    word. The hit lane (web/lane.py) answers a hit itself only then; False whenever they might
    refuse or need more to decide (a browser's headers, a cookie): the full way decides those."""
    host = headers.get("HOST")
    if host is not None and not host_allowed(host, config.host, config.allowed_hosts):
        return False
    if "ORIGIN" in headers or "SEC_FETCH_SITE" in headers:
        return False
    needed = required_role("POST", "/jobs")  # as check_access asks it
    if not config.tokens or needed is None:
        return True
    presented = bearer(headers.get("AUTHORIZATION", ""))
    token = match_token(presented, config.tokens) if presented is not None else None
    return (token is not None and ROLE_RANK[token.role] >= ROLE_RANK[needed]
            and may_ask_for(token, group))


def _same_origin() -> bool:
    """Whether the request carries an Origin and it is this server's own."""
    origin = request.headers.get("Origin")
    return bool(origin and same_origin(origin, request.host))


def local_next(value: str | None) -> str:
    """Where to go after logging in: a path on this server only, never another site. Browsers
    drop tabs and newlines from URLs and read a backslash as a slash, so `/\t/evil` and `/\\evil`
    would leave the site: any such character refuses the value."""
    if not value or not value.startswith("/") or "\\" in value:
        return "/"
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return "/"
    if value.startswith("//") or urlsplit(value).netloc or urlsplit(value).scheme:
        return "/"
    return value


# --- which hosts and origins may talk to this server ------------------------------------------

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header (or an origin's netloc) as (lower-case name, port or None); None when it is
    not HOST[:PORT]. IPv6 addresses keep no brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket:
            return None
    else:
        name, colon, port = value.partition(":")
        rest = colon + port
    if rest and not re.fullmatch(r":[0-9]{1,5}", rest):
        return None
    name = name.rstrip(".")
    if not name or not re.fullmatch(r"[a-z0-9_.:-]+", name) or (":" in name and not _is_ip(name)):
        return None
    return name, int(rest[1:]) if rest else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=256)  # every request asks; the Host is the client's choice: bounded
def host_allowed(host: str, listen_host: str, allowed_hosts: tuple[str, ...]) -> bool:
    """Whether this server answers a request addressed to `host` (a Host header). DNS rebinding
    needs a name the attacker controls, so these are always safe: an address (a browser sends one
    only when the page's own origin is that address), `localhost` and `*.localhost` (browsers
    resolve them to loopback themselves), and the listen address. Names are allowed by
    `allowed_hosts`; a server listening on every interface without `allowed_hosts` cannot know
    the names it is reached by and answers them all, as before."""
    parsed = split_host(host)
    if parsed is None:
        return False
    name, port = parsed
    if _is_ip(name) or name == "localhost" or name.endswith(".localhost"):
        return True
    if name == listen_host.lower().rstrip("."):
        return True
    for entry in allowed_hosts:
        allowed = split_host(entry)
        if allowed is not None and allowed[0] == name and allowed[1] in (None, port):
            return True
    return listen_host in WILDCARD_HOSTS and not allowed_hosts


DEFAULT_PORTS = {"http": 80, "https": 443}


def same_origin(origin: str, host: str) -> bool:
    """Whether a browser's Origin (scheme://host[:port]) is the server the request was addressed
    to (its Host header). The scheme is left out: a proxy that ends TLS in front of mistryd makes
    it differ, and host:port is what tells sites on the same machine apart."""
    parts = urlsplit(origin.strip())
    theirs = split_host(parts.netloc) if parts.scheme in DEFAULT_PORTS else None
    ours = split_host(host)
    if theirs is None or ours is None or theirs[0] != ours[0]:
        return False
    default = DEFAULT_PORTS[parts.scheme]
    return (theirs[1] or default) == (ours[1] or default)


def cross_origin_write(method: str, origin: str | None, fetch_site: str | None,
                       host: str) -> str | None:
    """Why a write is refused as sent by a browser from another origin's page, or None. Browsers
    send `Sec-Fetch-Site` and, on every cross-origin write, `Origin`; a web form can post
    `text/plain` to any address, and another port of the same host is another origin too."""
    if method in SAFE_METHODS:
        return None
    if fetch_site is not None and fetch_site.strip().lower() in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {fetch_site.strip()}"
    if origin is not None and not same_origin(origin, host):
        return f"Origin: {origin.strip()[:100]}"
    return None


def check_host():
    """The first before_request hook: refuse names this server does not answer to."""
    host = request.environ.get("HTTP_HOST")
    config = _config()
    if host is None or host_allowed(host, config.host, config.allowed_hosts):
        return None  # no Host at all: HTTP/1.0 from a script; browsers always send one
    split = split_host(host)
    if split is None:
        return _refuse(400, f"the Host header {host[:100]!r} is not HOST[:PORT]; send the "
                            "server's name or address")
    return _refuse(421, f"this server does not answer to the host {split[0]!r}; if "
                        "that name points here (a DNS name or a reverse proxy), add it to the "
                        "config's allowed_hosts")


def check_cross_origin():
    """The second hook: a browser's write from another origin's page never reaches a view."""
    why = cross_origin_write(request.method, request.headers.get("Origin"),
                             request.headers.get("Sec-Fetch-Site"), request.host)
    if why is None:
        return None
    return _refuse(403, f"{request.method} {request.path} was sent by a browser from another "
                        f"site's page ({why}); write from this server's own pages, or from a "
                        "script or the mistry client")


def _refuse(status: int, message: str):
    response = jsonify(error=message)
    response.status_code = status
    return response


# --- login for browsers -----------------------------------------------------------------------


@bp.get("/login")
def login():
    return render_template("login.html", next=local_next(request.args.get("next")),
                           error=None, open_server=not _config().tokens)


@bp.post("/login")
def login_submit():
    config = _config()
    next_url = local_next(request.form.get("next"))
    token = match_token(request.form.get("token", ""), config.tokens) if config.tokens else None
    if token is None:
        error = ("this server has no tokens configured: no login is needed" if not config.tokens
                 else "unknown token; paste a token from the server's config `tokens`")
        return render_template("login.html", next=next_url, error=error,
                               open_server=not config.tokens), 401
    response = redirect(next_url, code=303)
    response.set_cookie(COOKIE, request.form["token"], max_age=COOKIE_MAX_AGE, path="/",
                        httponly=True, samesite="Strict", secure=request.is_secure)
    return response


@bp.route("/logout", methods=["GET", "POST"])
def logout():
    response = redirect(url_for("auth.login"), code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
    return response


def _config() -> Config:
    return current_app.extensions["mistryd"].config


def init_app(app: Flask) -> None:
    app.before_request(check_host)  # in this order: host, then origin, then role
    app.before_request(check_cross_origin)
    app.before_request(check_access)
    app.register_blueprint(bp)
