"""Where the HTTP server listens: one address of `addr`'s host, with mistryd's own channel."""

import pytest
from flask import Flask

from mistryd.config import from_dict
from mistryd.errors import ConfigError
from mistryd.web.http import MistrydChannel, make_http_server, stop_http_server


def config(tmp_path, addr):
    (tmp_path / "projects").mkdir(exist_ok=True)
    return from_dict({"projects_path": str(tmp_path / "projects"),
                      "build_path": str(tmp_path / "builds"), "addr": addr})


def test_a_host_name_is_served_on_one_address_by_mistryds_channel(tmp_path):
    http = make_http_server(Flask("test"), config(tmp_path, "localhost:0"))
    try:
        assert http.effective_host == "127.0.0.1"
        assert http.channel_class is MistrydChannel
    finally:
        stop_http_server(http)
        http.close()


def test_a_host_name_that_does_not_resolve_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError) as refused:
        make_http_server(Flask("test"), config(tmp_path, "mistryd-test.invalid:0"))
    assert refused.value.key == "addr"
    assert "mistryd-test.invalid does not resolve" in refused.value.message
