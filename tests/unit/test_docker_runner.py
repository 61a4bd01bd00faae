"""The pure parts of the image step: tags per server, the build API's limits, reading the stream."""

from __future__ import annotations

import re

from mistryd.config import ProjectSettings
from mistryd.docker_runner import _ImageBuild, build_limits, image_tag, instance_id
from mistryd.logs import LiveLog

# docker's reference grammar: lowercase path components, a tag of at most 128 characters
REFERENCE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
                       r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def settings(**changes) -> ProjectSettings:
    base = {"build_timeout": 60, "memory": None, "cpus": None, "pids_limit": 4096,
            "network_mode": "bridge"}
    return ProjectSettings(**{**base, **changes})


def test_each_server_tags_its_own_images():
    one, other = instance_id("/srv/builds"), instance_id("/srv/other-builds")
    assert one == instance_id("/srv/builds") and one != other
    assert image_tag("hello", "f" * 64, one) != image_tag("hello", "f" * 64, other)
    assert one[:8] in image_tag("hello", "f" * 64, one)


def test_tags_are_valid_docker_references_for_any_project_name():
    for project in ("hello", "Hello World", "a..b", "--", "é" * 200, "x" * 300):
        tag = image_tag(project, "0123456789abcdef" * 4, instance_id("/b"))
        assert REFERENCE.match(tag), tag
    assert image_tag("A", "0", "i" * 16) != image_tag("a", "0", "i" * 16)  # the hash tells apart


def test_build_limits_give_memory_in_bytes_without_swap_and_the_network_mode():
    limits = build_limits(settings(memory="512m", cpus=0.5, network_mode="none"))
    assert limits == {"network_mode": "none",
                      "container_limits": {"memory": 512 << 20, "memswap": 512 << 20,
                                           "cpushares": 512}}


def test_build_limits_without_limits_set_only_the_network_mode():
    assert build_limits(settings()) == {"network_mode": "bridge"}


def test_the_stream_reader_keeps_the_image_the_error_and_the_running_step():
    build = _ImageBuild(LiveLog())
    build.take({"stream": " ---> Running in 0123456789ab\n"})
    build.take({"aux": {"ID": "sha256:feed"}})
    assert build.container == "0123456789ab" and build.image_id == "sha256:feed"
    assert build.error is None
    build.take({"error": "The command '/bin/sh -c false' returned a non-zero code: 1\n"})
    assert build.error == "The command '/bin/sh -c false' returned a non-zero code: 1"
