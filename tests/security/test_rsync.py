"""The rsync daemon (security item 5): with tokens it wants a login, it serves the artifacts of
successful builds and nothing else, it dies with mistryd and says so when its port is taken.
Real `mistryd` processes, real builds and the real `rsync` client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from support import free_port, make_setup, wait_for

pytestmark = pytest.mark.docker  # real builds in mistryd processes

REPO = Path(__file__).resolve().parents[2]
MISTRY = REPO / ".venv" / "bin" / "mistry"
READER = {"name": "reader", "token": "reader-token-0123456789", "role": "read"}
BUILDER = {"name": "builder", "token": "builder-token-0123456789", "role": "build"}
OPAQUE = "OPAQUE-PARAM-SECRET"
SECRETS = ("LOG-SECRET", "CACHE-SECRET", OPAQUE, "FAILED-ARTIFACT", "root:x:0:0")


def rsync(port: int, *args: str, user: str | None = None, password: str | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess:
    """The real rsync client against the daemon; without a password it cannot ask for one (no
    terminal: a new session), so a login it needs fails."""
    env = {k: v for k, v in os.environ.items() if k != "RSYNC_PASSWORD"}
    if password is not None:
        env["RSYNC_PASSWORD"] = password
    remote = f"{user}@127.0.0.1" if user else "127.0.0.1"
    argv = [a.replace("HOST::", f"{remote}::") for a in args]
    return subprocess.run(["rsync", f"--port={port}", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL,
                          start_new_session=True, check=False)


def build(url: str, project: str, params: dict | None = None) -> dict:
    r = requests.post(f"{url}/jobs", json={"project": project, "params": params or {}},
                      headers={"Authorization": f"Bearer {BUILDER['token']}"}, timeout=300)
    assert r.status_code == 201, r.text
    return r.json()


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(60)


@pytest.fixture(scope="module")
def secured(docker_engine, tmp_path_factory):
    """mistryd with tokens (no anonymous reads) and the rsync daemon, with a successful build
    that has a log, a cache, an opaque param and a link to the params, a failed build, and a
    build whose artifacts folder is a symlink to /etc."""
    root = tmp_path_factory.mktemp("secured")
    rsync_port = free_port()
    setup = make_setup(root, ("sec-rsync-leaky", "sec-rsync-failing", "sec-rsync-etc"),
                       rsync_addr=f"127.0.0.1:{rsync_port}", tokens=[READER, BUILDER],
                       filesystem="plain")
    proc = setup.start()
    try:
        builds = {"leaky": build(setup.url, "sec-rsync-leaky", {"_secret": OPAQUE, "v": "1"}),
                  "failing": build(setup.url, "sec-rsync-failing"),
                  "etc": build(setup.url, "sec-rsync-etc")}
        assert builds["leaky"]["ExitCode"] == 0 and builds["etc"]["ExitCode"] == 0
        assert builds["failing"]["ExitCode"] == 3
        yield setup, rsync_port, builds
    finally:
        stop(proc)


def artifacts(info: dict, rest: str = "") -> str:
    return f"HOST::mistry/{info['Project']}/ready/{info['ID']}/data/artifacts/{rest}"


def test_without_a_login_nothing_is_listed_or_read(secured, tmp_path):
    setup, port, builds = secured
    for source in ("HOST::mistry/", artifacts(builds["leaky"]),
                   f"HOST::mistry/sec-rsync-leaky/ready/{builds['leaky']['ID']}/out.log"):
        anonymous = rsync(port, "-r", "--list-only", source)
        assert anonymous.returncode != 0 and "sec-rsync" not in anonymous.stdout
        wrong = rsync(port, "-r", "--list-only", source, user="reader", password="x" * 20)
        assert wrong.returncode != 0 and "auth failed" in wrong.stderr
        assert "sec-rsync" not in wrong.stdout
    assert rsync(port, "-r", artifacts(builds["leaky"]), str(tmp_path / "o")).returncode != 0
    assert not (tmp_path / "o" / "sub").exists()


def test_a_token_logs_in_and_fetches_artifacts(secured, tmp_path):
    setup, port, builds = secured
    dest = tmp_path / "upstream"
    dest.mkdir()
    # upstream's exact command, with the token's name as user and the token as password
    done = rsync(port, "-rtlp", artifacts(builds["leaky"]), f"{dest}/", user="reader",
                 password=READER["token"])
    assert done.returncode == 0, done.stderr
    assert (dest / "sub" / "ok.txt").read_text() == "artifact\n"
    assert os.readlink(dest / "up") == "../params"  # a link stays a link, never followed

    # the mistry client: --transport-user names the token, --token (or MISTRY_TOKEN) is it
    out = tmp_path / "client"
    r = subprocess.run([str(MISTRY), "build", "--project", "sec-rsync-leaky", "-t", str(out),
                        "--port", str(setup.port), "--token", BUILDER["token"],
                        "--transport", "rsync", "--transport-user", "builder",
                        "--transport-port", str(port), "--", "--_secret", OPAQUE, "--v", "1"],
                       capture_output=True, text=True, timeout=300, check=False,
                       env={k: v for k, v in os.environ.items() if k != "RSYNC_PASSWORD"})
    assert r.returncode == 0, r.stderr
    assert (out / "sub" / "ok.txt").read_text() == "artifact\n"


def test_only_artifacts_of_successful_builds_are_served(secured, tmp_path):
    setup, port, builds = secured
    leaky = f"HOST::mistry/sec-rsync-leaky/ready/{builds['leaky']['ID']}"
    refused = [
        "HOST::mistry/", "HOST::mistry/sec-rsync-leaky/", "HOST::mistry/sec-rsync-leaky/ready/",
        f"{leaky}/", f"{leaky}/out.log", f"{leaky}/build_info.json", f"{leaky}/data/",
        f"{leaky}/data/cache/", f"{leaky}/data/params/", f"{leaky}/data/params/_secret",
        f"{leaky}/data/artifacts/../../out.log", f"{leaky}/data/artifacts/up/",
        "HOST::mistry/*/ready/*/data/artifacts/",  # the daemon expands it: failed builds too
        "HOST::mistry/sec-rsync-leaky/latest/data/artifacts/", "HOST::mistry/.mistryd/",
        artifacts(builds["failing"]), artifacts(builds["etc"]),
        artifacts(builds["etc"]).rstrip("/"), artifacts(builds["etc"], "passwd"),
    ]

    def refuses(i: int, source: str) -> None:
        dest = tmp_path / f"d{i}"
        dest.mkdir()
        got = rsync(port, "-rtlp", source, f"{dest}/", user="reader", password=READER["token"])
        assert got.returncode != 0, source
        assert not list(dest.iterdir()), source
        listed = rsync(port, "-r", "--list-only", source, user="reader", password=READER["token"])
        assert listed.returncode != 0, source
        assert not any(s in listed.stdout + listed.stderr for s in SECRETS), source

    # several clients at once (each refusal costs the daemon's auth delay): any failure is raised
    with ThreadPoolExecutor(6) as pool:
        for done in [pool.submit(refuses, i, source) for i, source in enumerate(refused)]:
            done.result()
    # following links on the daemon's side is refused too
    follow = rsync(port, "-rL", artifacts(builds["leaky"]), f"{tmp_path / 'follow'}/",
                   user="reader", password=READER["token"])
    assert follow.returncode != 0
    assert not (tmp_path / "follow" / "up").exists()


def test_anonymous_read_keeps_the_daemon_open_but_narrow(docker_engine, tmp_path):
    port = free_port()
    setup = make_setup(tmp_path, ("hello",), rsync_addr=f"127.0.0.1:{port}", tokens=[BUILDER],
                       anonymous_read=True, filesystem="plain")
    proc = setup.start()
    try:
        info = build(setup.url, "hello")
        dest = tmp_path / "o"
        dest.mkdir()
        assert rsync(port, "-rtlp", artifacts(info), f"{dest}/").returncode == 0
        assert (dest / "out.txt").read_text() == "hello\n"
        log = rsync(port, f"HOST::mistry/hello/ready/{info['ID']}/out.log", str(tmp_path / "l"))
        assert log.returncode != 0 and not (tmp_path / "l").exists()
    finally:
        stop(proc)


def test_the_daemon_dies_with_a_killed_server_and_comes_back(docker_engine, tmp_path):
    port = free_port()
    setup = make_setup(tmp_path, ("hello",), rsync_addr=f"127.0.0.1:{port}", filesystem="plain")
    proc = setup.start()
    info = build(setup.url, "hello")
    assert listening(port)
    proc.kill()
    proc.wait()
    wait_for(lambda: not listening(port), timeout=60)  # no event crosses processes: the port

    again = setup.start()
    try:
        dest = tmp_path / "o"
        dest.mkdir()
        done = rsync(port, "-rtlp", artifacts(info), f"{dest}/")
        assert done.returncode == 0, done.stderr
        assert (dest / "out.txt").read_text() == "hello\n"
    finally:
        stop(again)


def test_a_daemon_left_by_an_earlier_run_is_stopped(docker_engine, tmp_path):
    """A daemon that outlived its server (e.g. started before the parent-death signal), named by
    the pid file in build_path/.mistryd/, gives way to the new one instead of serving on."""
    port = free_port()
    setup = make_setup(tmp_path, ("hello",), rsync_addr=f"127.0.0.1:{port}", filesystem="plain")
    stale_root = tmp_path / "stale"
    stale_root.mkdir()
    (stale_root / "stale.txt").write_text("old configuration\n")
    (setup.builds / ".mistryd").mkdir(parents=True)
    pid_file = setup.builds / ".mistryd" / "rsyncd.pid"
    conf = tmp_path / "stale.conf"
    conf.write_text(f"pid file = {pid_file}\n[mistry]\npath = {stale_root}\nread only = yes\n"
                    "use chroot = no\n")
    old = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                            "--address=127.0.0.1", f"--port={port}"], start_new_session=True)
    try:
        wait_for(lambda: listening(port), timeout=60)
        assert rsync(port, "HOST::mistry/stale.txt", str(tmp_path / "s1")).returncode == 0
        proc = setup.start()
        try:
            assert old.wait(10) is not None
            stale = rsync(port, "HOST::mistry/stale.txt", str(tmp_path / "s2"))
            assert stale.returncode != 0 and not (tmp_path / "s2").exists()
            assert int(pid_file.read_text()) != old.pid
        finally:
            stop(proc)
    finally:
        if old.poll() is None:
            old.send_signal(signal.SIGKILL)
            old.wait()


def test_a_taken_port_stops_mistryd_with_one_clear_line(docker_engine, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        setup = make_setup(tmp_path, ("hello",), rsync_addr=f"127.0.0.1:{port}",
                           filesystem="plain")
        done = subprocess.run([sys.executable, "-m", "mistryd.cli", "--config", str(setup.config)],
                              capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "rsync_addr" in line]
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{port}" in lines[0] and f"pid {os.getpid()}" in lines[0]
    assert "choose another rsync_addr" in lines[0]
    assert "listening on" not in done.stderr


def test_a_pid_file_of_another_program_is_left_alone(docker_engine, tmp_path):
    port = free_port()
    setup = make_setup(tmp_path, ("hello",), rsync_addr=f"127.0.0.1:{port}", filesystem="plain")
    (setup.builds / ".mistryd").mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        (setup.builds / ".mistryd" / "rsyncd.pid").write_text(f"{bystander.pid}\n")
        proc = setup.start()
        try:
            assert bystander.poll() is None
            assert listening(port)
        finally:
            stop(proc)
    finally:
        bystander.kill()
        bystander.wait()
