"""`mistry build` read without click (mistry_client/quick.py): whatever it reads, it reads as click
does (the same parameters, the token too), and everything else goes to click; a plain build line
really runs without loading click."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest
from client_helpers import MISTRY
from hypothesis import given, settings
from hypothesis import strategies as st

from mistry_client import cli
from mistry_client.options import BUILD_OPTIONS
from mistry_client.quick import Unsure, read_build_line

FLAGS = sorted({flag for option in BUILD_OPTIONS for flag in option.flags})
VALUES = ["hello", "", "-x", "0", "1", "8462", "65536", "99999", "+80", " 80", "90s", "0s", "-5m",
          "bad", "http", "rsync", "ftp", "HTTP", "/etc/passwd", "/tmp", ".", "a=b", "=", "@x",
          "café"]
WORDS = st.one_of(st.sampled_from(FLAGS), st.sampled_from(VALUES),
                  st.sampled_from(["--", "-h", "--help", "--version", "-vt", "-tout", "--bogus",
                                   "--project=p", "--port=80", "--no-wait=1", "-p80",
                                   "--transport-arg=-F", "--timeout=1h"]))
ENV_VALUES = st.fixed_dictionaries({}, optional={
    "MISTRY_HOST": st.sampled_from(["", "h", "h:9", "http://h:80", "bad host"]),
    "MISTRY_PORT": st.sampled_from(["", "80", "x", "0"]),
    "MISTRY_TOKEN": st.sampled_from(["", "t0k"]),
    "MISTRY_TRANSPORT_PORT": st.sampled_from(["", "873", "nope"]),
})
ENV_NAMES = ("MISTRY_HOST", "MISTRY_PORT", "MISTRY_TOKEN", "MISTRY_TRANSPORT_PORT")


def click_reads(words: list[str], env: dict[str, str]) -> dict | None:
    """The parameters click calls `build` with (and the token), or None when it refuses."""
    saved = {name: os.environ.pop(name, None) for name in ENV_NAMES}
    os.environ.update(env)
    try:
        ctx = cli.build.make_context("build", list(words))
    except click.ClickException:
        return None
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
    return {**ctx.params, "token": ctx.meta.get("mistry.token")}


@settings(max_examples=400, deadline=None)
@given(st.lists(WORDS, max_size=8), st.booleans(), ENV_VALUES)
def test_what_the_quick_reader_reads_it_reads_as_click_does(words, with_project, env):
    words = (["--project", "p"] if with_project else []) + words
    try:
        quick = read_build_line(["build", *words], env)
    except Unsure:
        return  # click reads it (and answers it as always)
    assert click_reads(words, env) == quick


@pytest.mark.parametrize("words", [
    ["--project", "p"],
    ["--project", "p", "--target", "out", "--", "--k", "v", "k2=v2"],
    ["--project=p", "-t", "out", "-g", "g1", "--host", "h:9", "-p", "80", "--transport", "rsync",
     "--transport-user", "u", "--transport-port", "873", "--transport-arg=-F",
     "--transport-arg", "x", "--no-wait", "--explain", "--rebuild", "--clear-target",
     "--keep-special-bits", "--timeout", "5m", "-v", "--json-result", "--token", "t"],
])
def test_the_lines_scripts_run_are_read_without_click(words):
    quick = read_build_line(["build", *words], {})
    assert quick == click_reads(words, {})


@pytest.mark.parametrize("argv", [
    [], ["status", "x"], ["build"], ["build", "--help"], ["build", "--project", "p", "word"],
    ["build", "--project", "p", "--project", "q"], ["build", "--project", "p", "-vt", "out"],
    ["build", "--project", "p", "--port", "0"], ["build", "--project", "p", "--timeout", "0s"],
    ["build", "--project", "p", "--target", "/etc/passwd"],
])
def test_anything_else_goes_to_click(argv):
    with pytest.raises(Unsure):
        read_build_line(argv, {})


def test_a_cached_build_runs_without_loading_click(mistry, tmp_path):
    """The console script (quick.main): a plain build line against a real server imports
    neither click nor typing; a line for click still gets click's answer."""
    port = str(mistry.server().url.rsplit(":", 1)[1])
    assert mistry("build", "--project", "hello", "-t", str(tmp_path / "a")).returncode == 0
    r = subprocess.run([sys.executable, "-X", "importtime", str(MISTRY), "build", "--project",
                        "hello", "-t", str(tmp_path / "b"), "--port", port],
                       capture_output=True, text=True, timeout=60, env={**os.environ})
    assert r.returncode == 0, r.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:")}
    assert "mistry_client.build_command" in imported
    assert not {"click", "typing", "dataclasses", "inspect"} & imported
    assert (tmp_path / "b" / "out.txt").read_text() == "hello\n"
    r = mistry("build", "--project", "hello", "--port", "0")
    assert r.returncode == 2 and "Invalid value for '--port' / '-p'" in r.stderr, r.stderr
