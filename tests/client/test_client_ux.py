"""What a person sees from `mistry` (issue 15): the URL at once, a live status line on a terminal
(a real pseudo-terminal here), a summary, plain text in a pipe or with NO_COLOR; build ids by
prefix, `mistry ls`, `mistry status` and its exit codes; shell completion from the server."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
import requests
from client_helpers import MISTRY, await_log_line, port_of, run_mistry

SGR = re.compile(r"\x1b\[[0-9;]*m")  # a colour or text attribute
CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")  # any cursor or style sequence, and \r


def visible(raw: str) -> str:
    """What the terminal showed, roughly: escape sequences and carriage returns taken out."""
    return CONTROL.sub("", raw)


class OnTerminal:
    """The real `mistry` command on a pseudo-terminal (stdout and stderr both), read as it runs."""

    def __init__(self, args: list[str], port: int, env: dict | None = None):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes `mistry`, the pty its terminal
            os.environ.update({"MISTRY_HOST": "127.0.0.1", "MISTRY_PORT": str(port),
                               "TERM": "xterm-256color", "COLUMNS": "200", **(env or {})})
            if "NO_COLOR" not in (env or {}):
                os.environ.pop("NO_COLOR", None)
            os.execv(str(MISTRY), [str(MISTRY), *args])
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.raw = b""

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", "replace")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child has closed the terminal
            return False
        self.raw += chunk
        return bool(chunk)

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, visible(self.text)):
            assert time.monotonic() < deadline, f"no {pattern!r} in {visible(self.text)!r}"
            assert self._read(0.2), f"mistry ended without {pattern!r}: {visible(self.text)!r}"

    def finish(self, timeout: float = 180) -> int:
        deadline = time.monotonic() + timeout
        while self._read(1.0):
            assert time.monotonic() < deadline, visible(self.text)
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


@pytest.fixture
def queue_server(start_server, signal_dir):
    """One build at a time, so a second one waits in the queue while `client-waiting` runs."""
    server = start_server(projects=("client-waiting", "hello", "client-failing", "web-colours"),
                          mounts={str(signal_dir): "/signal"}, job_concurrency=1, job_backlog=40)
    yield server
    (signal_dir / "go").touch()


def submit(url: str, project: str, **params: str) -> str:
    r = requests.post(f"{url}/jobs?async", json={"project": project, "params": params},
                      timeout=60)
    assert r.status_code == 201, r.text
    return r.json()["id"]


# --- in a pipe: plain text ---------------------------------------------------------------------


def test_piped_build_prints_the_url_first_then_a_plain_summary(mistry, tmp_path):
    out = tmp_path / "out"
    r = mistry("build", "--project", "hello", "--target", str(out))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    port = port_of(mistry.server().url)
    assert lines[0].startswith(f"Logs can be found at http://127.0.0.1:{port}/job/hello/")
    build_id = lines[0].rsplit("/", 1)[1]
    assert lines[-2] == f"hello/{build_id[:12]} succeeded in " + lines[-2].split(" in ")[1]
    assert re.fullmatch(rf"Fetched 1 file \(6 B\) in \S+, \S+ \S+/s into {re.escape(str(out))}",
                        lines[-1]), lines[-1]
    assert "\x1b" not in r.stdout + r.stderr

    again = mistry("build", "--project", "hello", "--target", str(tmp_path / "second"))
    lines = again.stdout.splitlines()
    assert lines[0].endswith(f"/job/hello/{build_id}")
    assert lines[1].startswith("Cached: a finished build of ")  # said at once, after the URL
    assert lines[-2].startswith(f"hello/{build_id[:12]} succeeded") and "(cached)" in lines[-2]
    assert lines[-1].startswith("Fetched 1 file (6 B)") and str(tmp_path / "second") in lines[-1]

    same = mistry("build", "--project", "hello", "--target", str(out))  # the files are there
    assert same.stdout.splitlines()[-1] == f"Nothing to fetch: {out} holds the 1 file as built"


def test_verbose_on_a_cache_hit_says_the_log_is_recorded_before_showing_it(mistry, tmp_path):
    assert mistry("build", "--project", "hello", "-t", str(tmp_path / "a")).returncode == 0
    r = mistry("build", "--project", "hello", "-t", str(tmp_path / "b"), "-v")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"Build hello/[0-9a-f]{12}: http://\S+/job/hello/[0-9a-f]{64}", lines[0])
    assert lines[1].startswith("Cached:")
    assert lines[2] == "Its recorded log (from when it was built; not live):"
    assert 2 < lines.index("hello from the build") < lines.index(
        "Logs can be found at " + lines[0].split(": ", 1)[1])  # upstream's line, after the log


def test_json_result_keeps_stdout_for_the_json_and_tells_people_on_stderr(mistry, tmp_path):
    r = mistry("build", "--project", "hello", "-t", str(tmp_path / "o"), "--json-result")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ExitCode"] == 0
    assert r.stderr.splitlines()[0].startswith("Logs can be found at")
    assert r.stderr.splitlines()[-1].startswith("Fetched 1 file (6 B)")


# --- on a terminal: the status line, colours, the summary -------------------------------------


def test_terminal_shows_queued_then_running_then_a_summary(queue_server, signal_dir, tmp_path):
    url, port = queue_server.url, port_of(queue_server.url)
    first = submit(url, "client-waiting", n="1")
    await_log_line(url, "client-waiting", first, "waiting for the signal")
    term = OnTerminal(["build", "--project", "client-waiting", "-t", str(tmp_path / "o"),
                       "--", "--n", "2"], port)
    term.wait_for(r"Logs can be found at http://127\.0\.0\.1:\d+/job/client-waiting/[0-9a-f]{64}")
    term.wait_for(r"queued: 1st of 1 · \d+s")  # the live line, from the server's queue
    view = requests.get(f"{url}/job/client-waiting/{first}",
                        headers={"Accept": "application/json"}, timeout=10).json()
    assert view["Status"] == "running" and view["Elapsed"] >= 0 and "QueuePosition" not in view
    (signal_dir / "go").touch()
    assert term.finish() == 0
    shown = visible(term.text)
    assert shown.index("Logs can be found at") < shown.index("queued: 1st of 1")
    assert re.search(r"✓ client-waiting/[0-9a-f]{12} succeeded in \S+\n", shown), shown
    assert re.search(rf"Fetched 1 file \(3 B\) in \S+, \S+ \S+/s into {tmp_path / 'o'}", shown)
    assert SGR.search(term.text), "no colours on a terminal"


def test_terminal_joined_and_cached_builds_say_so(queue_server, signal_dir, tmp_path):
    url, port = queue_server.url, port_of(queue_server.url)
    first = submit(url, "client-waiting")
    await_log_line(url, "client-waiting", first, "waiting for the signal")
    term = OnTerminal(["build", "--project", "client-waiting", "-t", str(tmp_path / "a")], port)
    term.wait_for("Joined a build of the same request that was already under way")
    term.wait_for(r"joined a running build · running · \d+s")
    (signal_dir / "go").touch()
    assert term.finish() == 0
    assert re.search(r"succeeded in \S+ \(joined\)", visible(term.text)), visible(term.text)
    hit = OnTerminal(["build", "--project", "client-waiting", "-t", str(tmp_path / "b")], port)
    assert hit.finish() == 0
    shown = visible(hit.text)
    assert "Cached: a finished build of" in shown and "(cached)" in shown
    assert "running ·" not in shown  # nothing is waited for: no status line


def test_verbose_on_a_terminal_keeps_the_logs_colours_and_no_color_drops_them(queue_server,
                                                                              tmp_path):
    port = port_of(queue_server.url)
    args = ["build", "--project", "web-colours", "-v", "--", "--ticks", "0"]
    term = OnTerminal([*args[:3], "-t", str(tmp_path / "a"), *args[3:]], port)
    assert term.finish() == 0
    assert "\x1b[1;32mcoloured green" in term.text  # the build's own colours
    assert "\x1b[31mand is still red" in term.text  # a colour carried over a line end
    plain = OnTerminal([*args[:3], "-t", str(tmp_path / "b"), *args[3:]], port,
                       env={"NO_COLOR": "1"})
    assert plain.finish() == 0
    assert "coloured green" in plain.text and "Its recorded log" in plain.text
    assert not SGR.search(plain.text), "NO_COLOR must mean no colours"
    piped = run_mistry([*args[:3], "-t", str(tmp_path / "c"), *args[3:]], port=port)
    assert "coloured green and plain <b>not bold</b>" in piped.stdout
    assert "\x1b" not in piped.stdout


# --- build ids by prefix, ls, status -----------------------------------------------------------


def test_prefixes_ls_and_status_exit_codes(queue_server, signal_dir, tmp_path):
    url, port = queue_server.url, port_of(queue_server.url)
    ok = run_mistry(["build", "--project", "hello", "-t", str(tmp_path / "o"), "--json-result"],
                    port=port)
    good = json.loads(ok.stdout)["ID"]
    bad = run_mistry(["build", "--project", "client-failing", "--json-result"], port=port)
    failed = json.loads(bad.stdout)["ID"]
    running = submit(url, "client-waiting", n="0")
    await_log_line(url, "client-waiting", running, "waiting for the signal")
    # 16 more: two of these 17 ids share their first hex digit (only 16 digits to go round)
    queued = [submit(url, "client-waiting", n=str(i)) for i in range(1, 17)]
    ids = [running, *queued]
    first_digits = [i[0] for i in ids]
    shared = next(d for d in first_digits if first_digits.count(d) > 1)

    def status(*args: str) -> subprocess.CompletedProcess:
        return run_mistry(["status", *args], port=port)

    assert status("hello", good).returncode == 0  # the whole id with its project, as before
    assert status(good[:12]).returncode == 0  # 12 characters as the web view shows, no project
    assert status("client-failing", failed[:6]).returncode == 1
    assert status(running[:12]).returncode == 7  # running: neither success nor failure
    assert status(queued[0][:12]).returncode == 7
    human = status("--no-json", running[:12])
    assert human.stdout.splitlines()[0] == f"client-waiting/{running[:12]} " \
        + re.search(r"running · \d+s", human.stdout).group()
    assert f"  log        http://127.0.0.1:{port}/job/client-waiting/{running}" in human.stdout
    view = json.loads(status(queued[0][:12]).stdout)  # piped: JSON, as scripts expect
    assert view["Status"] == "queued" and view["QueuePosition"] == 1 and view["QueueLength"] == 16

    ambiguous = status(shared)
    assert ambiguous.returncode == 2, ambiguous.stderr
    assert ambiguous.stderr.startswith(f"'{shared}' is the start of more than one build id (")
    assert ambiguous.stderr.rstrip().endswith("type more of it")
    assert len(ambiguous.stderr.splitlines()) == 1
    unknown = status("hello", "abc" if not good.startswith("abc") else "abd")
    assert unknown.returncode == 3
    assert unknown.stderr.startswith("no build of project 'hello' has an id starting with")
    assert status("not-hex").returncode == 2
    logs = run_mistry(["logs", good[:10]], port=port)
    assert logs.returncode == 0 and "hello from the build" in logs.stdout

    listed = run_mistry(["ls", "--status", "queued", "--limit", "3"], port=port)
    rows = listed.stdout.splitlines()
    assert rows[0].split() == ["ID", "PROJECT", "STATUS", "STARTED", "DURATION", "GROUP"]
    assert len(rows) == 4 and all(r.split()[1:3] == ["client-waiting", "queued"] for r in rows[1:])
    assert [r.split()[0] for r in rows[1:]] == [i[:12] for i in reversed(queued)][:3]
    as_json = json.loads(run_mistry(["ls", "--project", "hello", "--json"], port=port).stdout)
    assert [r["id"] for r in as_json] == [good]
    assert run_mistry(["ls", "--status", "nope"], port=port).returncode == 2
    assert run_mistry(["ls", "--project", "no-such"], port=port).stdout == \
        "No builds of project 'no-such'\n"
    assert run_mistry(["ls", "--project", "hello", "--status", "failed"], port=port).stdout == \
        "No failed builds of project 'hello'\n"

    for build_id in queued:  # cancel by prefix: a queued build ends at once
        c = run_mistry(["cancel", build_id[:12]], port=port)
        assert c.returncode == 0 and c.stdout.startswith(f"Cancelled client-waiting/{build_id}")
    assert status(queued[3][:12]).returncode == 1  # cancelled counts as not succeeded
    (signal_dir / "go").touch()


def test_index_filters_and_projects_endpoint(mistry, tmp_path):
    url = mistry.server().url
    assert mistry("build", "--project", "hello", "-t", str(tmp_path / "o")).returncode == 0
    assert requests.get(f"{url}/projects", timeout=10).json() == \
        {"projects": ["client-big", "client-failing", "client-params", "client-tree", "hello"]}
    hello = requests.get(f"{url}/index/?project=hello&status=succeeded", timeout=10).json()
    assert [r["project"] for r in hello] == ["hello"]
    assert requests.get(f"{url}/index/?project=hello&status=failed", timeout=10).json() == []
    assert requests.get(f"{url}/index/?id={hello[0]['id'][:5].upper()}", timeout=10).json() \
        == hello
    for bad in ("status=nope", "id=xyz", f"id={'a' * 65}"):
        r = requests.get(f"{url}/index/?{bad}", timeout=10)
        assert r.status_code == 400 and r.json()["error"], bad


# --- shell completion ---------------------------------------------------------------------------


def complete(words: str, port: int) -> subprocess.CompletedProcess:
    """What bash's completion function asks `mistry` for `words` (the cursor at the end)."""
    env = {**os.environ, "_MISTRY_COMPLETE": "bash_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
           "MISTRY_HOST": "127.0.0.1", "MISTRY_PORT": str(port)}
    return subprocess.run([str(MISTRY)], env=env, capture_output=True, text=True, timeout=30)


def test_shell_completion_gives_the_servers_project_names(mistry):
    port = port_of(mistry.server().url)
    r = complete("mistry build --project ", port)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["plain,client-big", "plain,client-failing",
                                     "plain,client-params", "plain,client-tree", "plain,hello"]
    assert complete("mistry build --project client-p", port).stdout.splitlines() == \
        ["plain,client-params"]
    assert complete("mistry ls --project h", port).stdout.splitlines() == ["plain,hello"]
    for shell in ("bash", "zsh", "fish"):  # the scripts docs/client.md tells people to load
        source = subprocess.run([str(MISTRY)], env={**os.environ,
                                "_MISTRY_COMPLETE": f"{shell}_source"},
                                capture_output=True, text=True, timeout=30)
        assert source.returncode == 0 and "_MISTRY_COMPLETE" in source.stdout, shell


def test_shell_completion_is_quiet_and_quick_without_a_server():
    from support import free_port

    started = time.monotonic()
    r = complete("mistry build --project ", free_port())
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr == ""  # no names, no error
    assert time.monotonic() - started < 5


def test_no_rich_import_on_the_plain_path(mistry, tmp_path):
    """The plain path (a pipe, --json-result) never loads rich: it costs ~40 ms of start-up."""
    port = port_of(mistry.server().url)
    env = {**os.environ, "MISTRY_HOST": "127.0.0.1", "MISTRY_PORT": str(port)}
    for extra in ((), ("--json-result",)):
        r = subprocess.run([str(Path(MISTRY).parent / "python"), "-X", "importtime", "-m",
                            "mistry_client.cli", "build", "--project", "hello", "-t",
                            str(tmp_path / "o"), *extra], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert not re.search(r"\| +rich(\.|$)", r.stderr, re.M), extra
