"""Pure logic of the client: durations, dynamic params, SSE parsing, manifest path checks, host
forms, deadlines, the end event, error wording."""

from __future__ import annotations

import hashlib
import socket
import time

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from mistry_client.address import ServerAddress, parse_address
from mistry_client.api import finished_info
from mistry_client.deadline import cap, earliest, passed
from mistry_client.durations import format_duration, parse_duration
from mistry_client.errors import ServerError, TransferError, connection_problem
from mistry_client.log_tail import LogTail
from mistry_client.manifest import Manifest, _check_plain
from mistry_client.params import ParamError, parse_params
from mistry_client.sse import events
from mistry_client.staging import safe_relpath
from mistry_client.wire import CutShort, NoAnswer, NotHttp, WireError
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
        Manifest.of({"entries": entries})


def test_log_text_cannot_drive_the_terminal():
    from mistry_client.terminal import terminal_safe

    assert terminal_safe("\x1b]0;owned\x07red \x1b[31mtext\x9b2J\ttab\r") == "]0;ownedred [31mtext2J\ttab"


@pytest.mark.parametrize("text, address", [
    ("myserver", ServerAddress("http", "myserver", 8462)),
    ("  myserver  ", ServerAddress("http", "myserver", 8462)),
    ("myserver:9000", ServerAddress("http", "myserver", 9000)),
    ("http://myserver", ServerAddress("http", "myserver", 8462)),
    ("http://myserver:9000/", ServerAddress("http", "myserver", 9000)),
    ("HTTPS://MyServer:443", ServerAddress("https", "myserver", 443)),
    ("10.0.0.5:1", ServerAddress("http", "10.0.0.5", 1)),
    ("::1", ServerAddress("http", "::1", 8462)),
    ("[::1]:9000", ServerAddress("http", "::1", 9000)),
    ("http://[fe80::1]", ServerAddress("http", "fe80::1", 8462)),
])
def test_host_forms(text, address):
    assert parse_address(text, 8462) == address


def test_the_base_url_brackets_ipv6():
    assert parse_address("::1", 8462).base == "http://[::1]:8462"
    assert parse_address("https://h:1", 8462).base == "https://h:1"


@pytest.mark.parametrize("text, problem", [
    ("", "no host given"), ("ftp://h", "scheme 'ftp'"), ("h:", "bad port"), ("h:x", "bad port"),
    ("h:70000", "bad port"), ("h:0", "bad port"), ("http://h/api", "path after the host"),
    ("h?x=1", "path after the host"), ("u:p@h", "user name"), ("http://:80", "no host name"),
])
def test_host_forms_that_are_refused(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_address(text, 8462)


def test_deadline_helpers():
    assert cap(60, None) == 60
    assert 0 < cap(60, time.monotonic() - 5) <= 0.001  # passed: a tiny timeout, never 0
    assert cap(1, time.monotonic() + 100) == 1
    assert earliest(None, None) is None and earliest(None, 3.0, 2.0) == 2.0
    assert passed(time.monotonic() - 1) and not passed(None) and not passed(time.monotonic() + 99)


def test_the_end_events_info_is_used_only_when_it_is_a_finished_record():
    record = {"ID": "x", "Project": "p", "Status": "failed", "ExitCode": 2}
    assert finished_info({"status": "failed", "exit_code": 2, "info": record}) == record
    with_log = {**record, "ContainerStdouterr": "old"}
    assert finished_info({"info": with_log}) == record
    assert finished_info({"status": "succeeded", "exit_code": 0}) is None  # an older server
    assert finished_info({"status": "succeeded", "info": None}) is None  # the record is gone
    assert finished_info({"info": {**record, "Status": "running"}}) is None
    assert finished_info({}) is None


def test_the_log_tail_keeps_the_last_lines_and_says_so():
    tail = LogTail("http://h:1/job/p/x/out.log", limit=10)
    assert tail.text() == ""
    for line in ("one", "two", "three"):
        tail.add(line)
    assert tail.text() == ("[mistry: 1 earlier lines are left out here; the whole log: "
                           "http://h:1/job/p/x/out.log]\ntwo\nthree\n")
    short = LogTail("u")
    short.add("é")
    assert short.text() == "é\n"


def _wrapping(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize("error, problem", [
    (requests.ConnectionError(_wrapping(OSError("new connection"),
                                        ConnectionRefusedError(111, "Connection refused"))),
     "connection refused"),
    (requests.ConnectionError(_wrapping(OSError("resolve"), socket.gaierror(-2, "Name or service"))),
     "the host name does not resolve"),
    (WireError(NoAnswer("closed"), "read"), "the connection broke"),
    (WireError(CutShort("cut"), "read"), "the connection broke"),
    (WireError(NotHttp("SSH-2.0"), "read"), "the answer is not HTTP"),
    (requests.ConnectionError(_wrapping(OSError("x"), OSError(113, "No route to host"))),
     "no route to host"),
    (requests.ConnectionError("something else"), "ConnectionError"),
])
def test_connection_problems_in_a_few_words(error, problem):
    assert connection_problem(error) == problem


def test_server_errors_are_one_line():
    assert ServerError(500, "first\nsecond\n").message == "(error: 500) first second"


@given(st.lists(st.text(alphabet="ab./\n\0", max_size=8), min_size=1, max_size=6))
def test_the_one_scan_path_check_refuses_exactly_what_safe_relpath_refuses(paths):
    def refused(check) -> bool:
        try:
            check()
        except TransferError:
            return True
        return False

    expected = any(refused(lambda p=p: safe_relpath(p)) for p in paths)
    assert refused(lambda: _check_plain(paths)) == expected


@pytest.mark.parametrize("line, plain, coloured", [
    ("\x1b[1;32mgreen\x1b[0m and plain", "green and plain", "\x1b[1;32mgreen\x1b[0m and plain"),
    ("fetch 10%\rfetch 55%\rfetch done", "fetch done", "fetch done"),  # what a terminal shows
    ("working...\r\x1b[2Kall done", "all done", "all done"),  # erased and written again
    ("\x1b[1Aup\x1b[5Cright\x1b[Gleft", "uprightleft", "uprightleft"),  # cursor moves, whole
    ("\x1b]0;a window title\x07titled", "titled", "titled"),
    ("windows line\r", "windows line", "windows line"),  # CRLF: the \r rewrites nothing
    ("\x1b[31mred \rstill red\x1b[0m", "still red", "\x1b[31mstill red\x1b[0m"),  # colour kept
    ("bell\x07 and\x7f del\x00", "bell and del", "bell and del"),
])
def test_log_lines_leave_no_escape_leftovers(line, plain, coloured):
    from mistry_client.terminal import plain_text, terminal_safe_keeping_colours

    assert plain_text(line) == plain
    assert terminal_safe_keeping_colours(line) == coloured


@pytest.mark.parametrize("asked, tty, no_color, keeps", [
    (None, True, "", True), (None, False, "", False), (None, True, "1", False),
    (True, False, "", True), (True, True, "1", True), (False, True, "", False),
])
def test_when_mistry_logs_keeps_the_logs_colours(monkeypatch, asked, tty, no_color, keeps):
    from mistry_client.ui import log_colours

    class Stream:
        def isatty(self) -> bool:
            return tty

    monkeypatch.setenv("NO_COLOR", no_color)
    monkeypatch.setenv("TERM", "xterm")
    assert log_colours(asked, Stream()) is keeps  # type: ignore[arg-type]


def test_completed_ids_are_the_shortest_unique_prefix_of_at_least_12_characters():
    from mistry_client.completion import unique_prefix

    ids = ["3fa9c1d2e4b5" + "a" * 52, "3fa9c1d2e4b5" + "ab" + "0" * 50, "77" + "0" * 62]
    assert unique_prefix(ids[0], ids, 12) == "3fa9c1d2e4b5aa"
    assert unique_prefix(ids[1], ids, 12) == "3fa9c1d2e4b5ab"
    assert unique_prefix(ids[2], ids, 12) == "77" + "0" * 10
    assert unique_prefix(ids[2], ids, 20) == "77" + "0" * 18  # never shorter than typed
    assert unique_prefix(ids[0], [ids[0], ids[0]], 12) == ids[0][:12]


def test_a_file_is_written_in_pieces_of_at_most_32_kib(tmp_path, monkeypatch):
    """Longer writes get large page-cache folios, which cost several times as much when many
    downloads run at once (download.WRITE)."""
    from mistry_client import download

    sizes = []
    real_write = download.os.pwrite

    def write(fd, data, offset):
        sizes.append(len(data))
        return real_write(fd, data, offset)

    data = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and 4 bytes
    manifest = Manifest.of({"entries": [{"path": "f", "type": "file", "size": len(data),
                                         "sha256": hashlib.sha256(data).hexdigest()}]})
    sink = download.FileSink(str(tmp_path / "f"), manifest, 0, 0o644, 0o022)
    monkeypatch.setattr(download.os, "pwrite", write)
    sink.write(memoryview(data))
    monkeypatch.undo()
    sink.finish()
    assert max(sizes) == download.WRITE == 32 << 10 and sum(sizes) == len(data)
    assert (tmp_path / "f").read_bytes() == data


def test_a_file_longer_than_the_manifest_says_is_refused_before_it_is_written(tmp_path):
    """A server that would fill the disk: refused at the first byte too many."""
    from mistry_client import download

    manifest = Manifest.of({"entries": [{"path": "f", "type": "file", "size": 10,
                                         "sha256": hashlib.sha256(b"0123456789").hexdigest()}]})
    sink = download.FileSink(str(tmp_path / "f"), manifest, 0, 0o644, 0o022)
    sink.write(b"01234")
    with pytest.raises(TransferError, match="got more than the manifest's 10 bytes"):
        sink.write(b"567890")
    sink.close()
    assert (tmp_path / "f").read_bytes() == b"01234"
