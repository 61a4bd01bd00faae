"""Shell completion of build ids (issue 15): `mistry status|logs|cancel [PROJECT] ID<Tab>` offers
the server's builds as their 12-character prefixes, in bash (its real completion function, as
`eval "$(_MISTRY_COMPLETE=bash_source mistry)"` loads it), zsh and fish (click's protocol for
them: the words in COMP_WORDS, the answer on stdout, as their scripts call `mistry`)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from client_helpers import MISTRY, port_of


@pytest.fixture
def builds(start_server):
    """A server with three finished builds: (port, {name: id}), hello and client-params twice."""
    server = start_server(projects=("hello", "client-params"))
    ids = {"hello": server.build("hello")["ID"]}
    for n in ("1", "2"):
        ids[f"params{n}"] = server.build("client-params", params={"n": n})["ID"]
    return port_of(server.url), ids


def env_for(port: int, **extra: str) -> dict:
    return {**os.environ, "MISTRY_HOST": "127.0.0.1", "MISTRY_PORT": str(port),
            "PATH": f"{MISTRY.parent}:{os.environ['PATH']}", **extra}


def bash_completes(words: list[str], port: int) -> list[str]:
    """COMPREPLY of the completion function bash loads for `mistry`, for `words` (the last one
    being typed)."""
    script = ('eval "$(_MISTRY_COMPLETE=bash_source mistry)"\n'
              f'COMP_WORDS=({" ".join(_bash_quote(w) for w in words)})\n'
              f"COMP_CWORD={len(words) - 1}\n"
              "_mistry_completion mistry\n"
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    r = subprocess.run(["bash", "-c", script], env=env_for(port), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return [line for line in r.stdout.splitlines() if line]


def _bash_quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def click_protocol(shell: str, port: int, words: str, cword: str) -> list[str]:
    r = subprocess.run([str(MISTRY)], env=env_for(port, _MISTRY_COMPLETE=f"{shell}_complete",
                                                  COMP_WORDS=words, COMP_CWORD=cword),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return [line for line in r.stdout.splitlines() if line]


# a build's description: project, status, start (zsh and fish show it beside the id)
DESCRIBED = r"{project} succeeded \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d"


def test_build_ids_complete_in_bash_zsh_and_fish(builds):
    port, ids = builds
    params = [ids["params2"][:12], ids["params1"][:12]]  # newest first
    for command in ("status", "logs", "cancel"):
        assert bash_completes(["mistry", command, "client-params", ""], port) == params
    assert bash_completes(["mistry", "logs", "client-params", ids["params1"][:3]], port) == \
        [i for i in params if i.startswith(ids["params1"][:3])]
    # the first word: a project name, or an id of any project once hex digits are typed
    assert bash_completes(["mistry", "logs", ids["hello"][:4]], port) == \
        [i[:12] for i in ids.values() if i.startswith(ids["hello"][:4])]
    assert bash_completes(["mistry", "logs", "h"], port) == ["hello"]
    assert bash_completes(["mistry", "logs", "hello", "zz"], port) == []  # not an id
    assert bash_completes(["mistry", "logs", "hello", ids["params1"][:12]], port) == []
    # the options before the words still name the server
    assert bash_completes(["mistry", "status", "--port", str(port), "hello", ""], port) == \
        [ids["hello"][:12]]

    # zsh and fish: the same ids, with a description
    zsh = click_protocol("zsh", port, "mistry logs client-params ", "3")
    triples = [zsh[i:i + 3] for i in range(0, len(zsh), 3)]
    assert [t[:2] for t in triples] == [["plain", ids["params2"][:12]],
                                        ["plain", ids["params1"][:12]]]
    assert all(re.fullmatch(DESCRIBED.format(project="client-params"), t[2]) for t in triples)

    prefix = ids["hello"][:5]
    fish = click_protocol("fish", port, f"mistry status {prefix}", prefix)
    hello = [line for line in fish if line.startswith(f"plain,{ids['hello'][:12]}")]
    assert len(hello) == 1, fish
    value, help_text = hello[0].split("\t")
    assert value == f"plain,{ids['hello'][:12]}"
    assert re.fullmatch(DESCRIBED.format(project="hello"), help_text)


def test_id_completion_is_quiet_and_quick_without_a_server():
    from support import free_port

    assert bash_completes(["mistry", "logs", "hello", ""], free_port()) == []
    assert click_protocol("fish", free_port(), "mistry status 3f", "3f") == []
