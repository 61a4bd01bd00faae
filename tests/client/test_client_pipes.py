"""What `mistry` writes when its output is not a terminal (issue 15): `mistry build ... | tee f`
with the messages on a real pseudo-terminal (stderr), and `mistry logs` piped, on a terminal,
with --color: no status line, no bar, no escape-sequence leftovers where they do not belong."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time

import pytest
from client_helpers import MISTRY, port_of, run_mistry

# a cursor move, a line erase, a carriage return or rich's spinner: what a live line leaves
LIVE_LINE = re.compile(r"\x1b\[[0-9;?]*[A-HJKST]|\x1b\[\?25[lh]|\r|[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]")
SGR = re.compile(r"\x1b\[[0-9;]*m")
# what escape sequences leave when their ESC alone is removed: `[2K`, `[1A`, `]0;`
LEFTOVER = re.compile(r"\[[0-9;?]*[A-Za-z]|\][0-9];|[\x00-\x08\x0b-\x1f\x7f]")
ESCAPES_PLAIN = ["green and plain", "fetch done", "all done", "uprightleft", "titled",
                 "windows line", "still red"]


def build_part(log: str) -> list[str]:
    """The lines the build container wrote (the log starts with the image build), colours
    taken out."""
    lines = SGR.sub("", log).splitlines()
    return lines[lines.index("green and plain"):]


def run_with_stderr_on_a_terminal(args: list[str], port: int) -> tuple[int, str, str]:
    """`mistry ARGS | cat`, its stderr a pseudo-terminal: (exit code, stdout, the terminal)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "MISTRY_HOST": "127.0.0.1", "MISTRY_PORT": str(port),
           "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([str(MISTRY), *args], stdout=subprocess.PIPE, stderr=follower,
                            stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    terminal = b""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            terminal += chunk
        elif proc.poll() is not None:
            break
    stdout = proc.stdout.read() if proc.stdout else b""
    code = proc.wait(60)
    os.close(leader)
    return code, stdout.decode(), terminal.decode("utf-8", "replace")


@pytest.fixture
def server(start_server):
    return start_server(projects=("web-colours", "client-escapes"))


def test_build_into_a_pipe_with_stderr_on_a_terminal_draws_no_live_line(server, tmp_path):
    """`mistry build ... | tee f`: stdout is a pipe, stderr the user's terminal, which also
    shows what tee copies. A status line or bar redrawn on stderr would be torn by tee's lines,
    so neither is drawn: the terminal gets the plain lines, f the same, and stderr only errors."""
    port = port_of(server.url)
    # two slow lines: a status line (8 redraws a second) would have shown many times
    code, out, term = run_with_stderr_on_a_terminal(
        ["build", "--project", "web-colours", "-t", str(tmp_path / "a"), "--", "--ticks", "2"],
        port)
    assert code == 0, term
    assert term == ""  # a success has nothing to say on stderr
    lines = out.splitlines()
    assert lines[0].startswith("Logs can be found at http://127.0.0.1:")
    assert re.fullmatch(r"web-colours/[0-9a-f]{12} succeeded in \S+", lines[1]), lines
    assert lines[2].startswith("Fetched 3 files (") and len(lines) == 3
    assert "\x1b" not in out and "\r" not in out

    code, out, term = run_with_stderr_on_a_terminal(
        ["build", "--project", "web-colours", "-v", "-t", str(tmp_path / "b"), "--",
         "--ticks", "2", "--fail", "yes"], port)
    assert code == 1
    assert "coloured green and plain <b>not bold</b>\n" in out and "tick 2\n" in out
    assert "\x1b" not in out and "\r" not in out  # the log's colours stay out of the pipe
    assert not LIVE_LINE.search(term.replace("\r\n", "\n")), repr(term)
    assert term.replace("\r\n", "\n").splitlines() == \
        ["Build failed with exit code 3", "a line on stderr", "failing on purpose"]


def test_logs_in_a_pipe_are_plain_text_and_on_a_terminal_keep_only_colours(server):
    info = server.build("client-escapes")
    port = port_of(server.url)
    raw = (server.build_path / "client-escapes" / "ready" / info["ID"] / "out.log").read_bytes().decode()
    assert "\x1b[2K" in raw and "\r" in raw  # the build did leave its terminal output behind

    for follow in ([], ["-f"]):  # the finished build's record, and its log stream
        piped = run_mistry(["logs", *follow, info["ID"][:12]], port=port)
        assert piped.returncode == 0, piped.stderr
        assert build_part(piped.stdout) == ESCAPES_PLAIN, follow
        assert not LEFTOVER.search(piped.stdout), follow

        coloured = run_mistry(["logs", *follow, "--color", info["ID"][:12]], port=port)
        assert "\n\x1b[1;32mgreen\x1b[0m and plain\n" in coloured.stdout
        assert "\x1b[31mstill red\x1b[0m" in coloured.stdout
        assert build_part(coloured.stdout) == ESCAPES_PLAIN  # colours, nothing else
        assert not LEFTOVER.search(SGR.sub("", coloured.stdout)), follow

    _, out, term = run_with_stderr_on_a_terminal(["logs", "--no-color", info["ID"][:12]],
                                                 port)
    assert build_part(out) == ESCAPES_PLAIN and "\x1b" not in out and term == ""


def test_logs_on_a_terminal_keep_the_colours_unless_no_color(server):
    info = server.build("client-escapes")
    port = port_of(server.url)
    for env, coloured in (({}, True), ({"NO_COLOR": "1"}, False)):
        pid, fd = pty.fork()
        if pid == 0:
            os.environ.update({"MISTRY_HOST": "127.0.0.1", "MISTRY_PORT": str(port),
                               "TERM": "xterm-256color", **env})
            if not env:
                os.environ.pop("NO_COLOR", None)
            os.execv(str(MISTRY), [str(MISTRY), "logs", info["ID"][:12]])
        shown = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
        os.waitpid(pid, 0)
        os.close(fd)
        text = shown.decode().replace("\r\n", "\n")  # the terminal's own line ends
        assert bool(SGR.search(text)) is coloured, env
        assert build_part(text) == ESCAPES_PLAIN, env
        assert not LIVE_LINE.search(text), repr(text)
