"""The pure rules that decide which requests reach a view: Host names, browser origins, and where
the login page may send a browser afterwards."""

from __future__ import annotations

import pytest

from mistryd.config import from_dict
from mistryd.errors import ConfigError
from mistryd.web.auth import (
    cross_origin_write,
    host_allowed,
    local_next,
    same_origin,
    split_host,
    startup_warning,
)


def test_split_host():
    assert split_host("Example.ORG.") == ("example.org", None)
    assert split_host("127.0.0.1:8462") == ("127.0.0.1", 8462)
    assert split_host("[::1]:80") == ("::1", 80)
    assert split_host("[::1]") == ("::1", None)
    for bad in ("", ":80", "a b", "a:b", "a:80:90", "[::1", "[::1]x", "evil/x", "a:123456", "x@y"):
        assert split_host(bad) is None, bad


@pytest.mark.parametrize("host", ["127.0.0.1:5000", "127.3.4.5", "localhost:1", "LOCALHOST",
                                  "app.localhost", "[::1]:9", "192.0.2.7"])
def test_addresses_and_loopback_names_are_always_answered(host):
    assert host_allowed(host, "127.0.0.1", ())


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8462", "localhost.evil.example",
                                  "127.0.0.1.evil.example", "not a host", ""])
def test_other_names_are_refused_on_a_loopback_server(host):
    assert not host_allowed(host, "127.0.0.1", ())


def test_the_listen_name_and_allowed_hosts_are_answered():
    assert host_allowed("buildbox:8462", "buildbox", ())
    allowed = ("builds.example.org", "proxy.lan:8080")
    assert host_allowed("BUILDS.example.org", "127.0.0.1", allowed)
    assert host_allowed("builds.example.org:443", "127.0.0.1", allowed)  # no port: any port
    assert host_allowed("proxy.lan:8080", "127.0.0.1", allowed)
    assert not host_allowed("proxy.lan:8081", "127.0.0.1", allowed)
    assert not host_allowed("proxy.lan", "127.0.0.1", allowed)
    assert not host_allowed("evil.example", "192.0.2.7", ())


def test_a_server_on_every_interface_answers_any_name_until_allowed_hosts_is_set():
    assert host_allowed("buildserver.corp", "0.0.0.0", ())
    assert host_allowed("buildserver.corp", "::", ())
    assert not host_allowed("evil.example", "0.0.0.0", ("buildserver.corp",))
    assert host_allowed("buildserver.corp", "0.0.0.0", ("buildserver.corp",))
    assert host_allowed("10.0.0.5:8462", "0.0.0.0", ("buildserver.corp",))
    assert not host_allowed("a b", "0.0.0.0", ())


def test_same_origin_compares_host_and_port_but_not_the_scheme():
    assert same_origin("http://127.0.0.1:8462", "127.0.0.1:8462")
    assert same_origin("https://builds.example.org", "builds.example.org")  # TLS ends at a proxy
    assert same_origin("http://builds.example.org", "builds.example.org:80")
    assert not same_origin("http://127.0.0.1:1", "127.0.0.1:8462")
    assert not same_origin("http://evil.example:8462", "127.0.0.1:8462")
    assert not same_origin("null", "127.0.0.1:8462")
    assert not same_origin("file://", "127.0.0.1:8462")
    assert not same_origin("http://127.0.0.1:8462.evil.example", "127.0.0.1:8462")


def test_cross_origin_writes_are_refused_and_scripts_are_not():
    host = "127.0.0.1:8462"
    assert cross_origin_write("POST", "http://evil.example", None, host) == \
        "Origin: http://evil.example"
    assert cross_origin_write("POST", "null", None, host)
    assert cross_origin_write("DELETE", None, "cross-site", host) == "Sec-Fetch-Site: cross-site"
    assert cross_origin_write("POST", None, "same-site", host)  # another port of this host
    assert cross_origin_write("POST", f"http://{host}", "cross-site", host)
    # curl, upstream's Go client and `mistry` send neither header
    assert cross_origin_write("POST", None, None, host) is None
    assert cross_origin_write("POST", f"http://{host}", "same-origin", host) is None
    assert cross_origin_write("POST", None, "none", host) is None  # typed by the user
    for method in ("GET", "HEAD", "OPTIONS"):
        assert cross_origin_write(method, "http://evil.example", "cross-site", host) is None


@pytest.mark.parametrize("value", [None, "", "evil", "//evil.example", "/\t/evil.example",
                                   "/\n/evil.example", "/\\evil.example", "\\\\evil.example",
                                   "https://evil.example", "http:/evil.example", "/ /evil",
                                   "javascript:alert(1)", "/\x00", "/\x7f/evil"])
def test_login_never_sends_the_browser_elsewhere(value):
    assert local_next(value) == "/"


@pytest.mark.parametrize("value", ["/", "/job/hello/abc", "/builds?project=hello&page=2",
                                   "/find?id=ab#top", "/a//b"])
def test_login_keeps_paths_of_this_server(value):
    assert local_next(value) == value


def test_allowed_hosts_in_the_config(tmp_path):
    base = {"projects_path": str(tmp_path), "build_path": str(tmp_path / "b")}
    cfg = from_dict({**base, "allowed_hosts": ["Builds.Example.org.", "proxy.lan:8080", "[::1]"]})
    assert cfg.allowed_hosts == ("builds.example.org", "proxy.lan:8080", "[::1]")
    assert from_dict(base).allowed_hosts == ()
    for bad in (["http://x"], ["a b"], [""], [5], "builds.example.org", ["x:port"]):
        with pytest.raises(ConfigError, match="allowed_hosts"):
            from_dict({**base, "allowed_hosts": bad})


def test_an_open_server_on_every_interface_is_told_about_allowed_hosts(tmp_path):
    base = {"projects_path": str(tmp_path), "build_path": str(tmp_path / "b"), "addr": "0.0.0.0:1"}
    assert "allowed_hosts" in startup_warning(from_dict(base))
    assert "allowed_hosts" not in startup_warning(from_dict({**base, "allowed_hosts": ["x"]}))
