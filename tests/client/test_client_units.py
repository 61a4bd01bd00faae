"""Pure logic of the client: durations, dynamic params, SSE parsing, manifest path checks."""

from __future__ import annotations

import pytest

from mistry_client.durations import format_duration, parse_duration
from mistry_client.errors import ServerError, TransferError
from mistry_client.params import ParamError, parse_params
from mistry_client.sse import events
from mistry_client.staging import safe_relpath
from mistry_client.transports import _checked_entries
from mistryd.web.artifacts import safe_relative


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("1.5h", 5400), ("300ms", 0.3),
    ("2m3s", 123), ("0", 0), ("10us", 1e-5), ("1h0m0s", 3600), ("-1s", -1), (".5s", 0.5),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "m", "5x", "1h 30m", "abc", "1.2.3s", "s5"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize("seconds, text", [
    (3600, "1h0m0s"), (90, "1m30s"), (2, "2s"), (1.5, "1.5s"), (0.3, "300ms"), (0, "0s"),
    (5400, "1h30m0s"),
])
def test_format_duration_like_go(seconds, text):
    assert format_duration(seconds) == text


def test_params_upstream_example():
    assert parse_params(["--a", "b", "c=d", "e=f", "--g", "h"]) == \
        {"a": "b", "c": "d", "e": "f", "g": "h"}


def test_params_keep_everything_after_the_first_equals():
    assert parse_params(["--url=http://x/?a=b=c", "k=v=w"]) == \
        {"url": "http://x/?a=b=c", "k": "v=w"}


def test_params_file_values(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("line 1\nline 2\n")
    assert parse_params(["--notes", f"@{f}", f"--n2=@{f}", "--at=@"]) == \
        {"notes": "line 1\nline 2\n", "n2": "line 1\nline 2\n", "at": "@"}


def test_params_empty_value_and_errors(tmp_path):
    assert parse_params(["--k="]) == {"k": ""}
    for bad in (["--k"], ["--k", "--j", "v"], ["word"], ["--=v"], ["=v"]):
        with pytest.raises(ParamError):
            parse_params(bad)
    with pytest.raises(ParamError, match="cannot read"):
        parse_params([f"--k=@{tmp_path / 'missing'}"])


def test_sse_events_split_across_chunks():
    raw = b"retry: 1000\n\nid: 6\ndata: hello\n\n: keep-alive\n\nid: 1" \
          b"2\ndata: world\n\nevent: end\ndata: {\"status\": \"succeeded\"}\n\n"
    chunks = [raw[i:i + 5] for i in range(0, len(raw), 5)]
    got = [(e.event, e.id, e.data) for e in events(chunks)]
    assert got == [("message", "6", "hello"), ("message", "12", "world"),
                   ("end", None, '{"status": "succeeded"}')]


def test_server_error_messages_match_upstream():
    assert ServerError(503, "Server is overloaded; try again later").message == \
        "(error: 503) Server is overloaded; try again later"
    assert ServerError(404, "Unknown project 'x'").message == "Unknown project 'x'"


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "", "a/."])
def test_unsafe_paths_are_refused_on_both_sides(path):
    assert safe_relative(path) is None
    with pytest.raises(TransferError):
        safe_relpath(path)


def test_manifest_may_not_put_files_beneath_a_symlink():
    entries = [{"path": "link", "type": "symlink", "target": "/etc"},
               {"path": "link/passwd", "type": "file", "size": 1, "sha256": "0"}]
    with pytest.raises(TransferError, match="beneath a symlink"):
        _checked_entries(entries)


def test_log_text_cannot_drive_the_terminal():
    from mistry_client.terminal import terminal_safe

    assert terminal_safe("\x1b]0;owned\x07red \x1b[31mtext\x9b2J\ttab\r") == "]0;ownedred [31mtext2J\ttab"
