"""The comparison behind GET /jobs/explain and the build page's "differs from build X" line
(mistryd/explain.py), and the inputs each build keeps."""

from __future__ import annotations

import json
import os

import pytest

from mistryd.errors import BadRequest
from mistryd.explain import (
    INPUTS_FILE,
    FileChange,
    Inputs,
    cache_source,
    compare,
    file_changes,
    files_of,
    keep_inputs,
    recorded_inputs,
    request_from_query,
)
from mistryd.layout import Layout
from mistryd.projects import folder_entries, folder_fingerprint

SECRET = "s3cret-value-never-shown"


def inputs(files=None, params=None, group="g", opaque=frozenset()) -> Inputs:
    return Inputs("demo", group, params or {}, opaque,
                  {"Dockerfile": "file- aa"} if files is None else files)


def test_the_same_inputs_differ_in_nothing():
    d = compare(inputs(params={"v": "1"}), inputs(params={"v": "1"}))
    assert d.files == () and d.params == () and d.group is None
    assert d.summary() == "no difference in files, params or group"


def test_files_added_removed_and_modified_by_path():
    old = {"Dockerfile": "file- aa", "build.sh": "filex bb", "old.txt": "file- cc",
           "link": "link a"}
    new = {"Dockerfile": "file- aa", "build.sh": "file- bb", "new.txt": "file- dd",
           "link": "link b"}
    assert file_changes(old, new) == (
        FileChange("build.sh", "modified"),  # the executable bit
        FileChange("link", "modified"),  # another target
        FileChange("new.txt", "added"),
        FileChange("old.txt", "removed"),
    )


def test_a_new_folder_shows_as_its_files_and_an_empty_one_as_itself():
    old = {"Dockerfile": "file- aa"}
    new = {"Dockerfile": "file- aa", "src": "dir ", "src/a.c": "file- 01", "empty": "dir "}
    assert file_changes(old, new) == (FileChange("empty", "added"),
                                      FileChange("src/a.c", "added"))
    # a folder whose name is a prefix of another's is not covered by it
    assert file_changes({}, {"src": "dir ", "src2": "dir ", "src2/x": "file- 1"}) == (
        FileChange("src", "added"), FileChange("src2/x", "added"))


def test_params_differ_by_name_with_their_values():
    d = compare(inputs(params={"v": "1", "gone": "x"}), inputs(params={"v": "2", "new": "y"}))
    assert [p.to_json() for p in d.params] == [
        {"Name": "gone", "Change": "removed", "Opaque": False, "Was": "x", "Now": None},
        {"Name": "new", "Change": "added", "Opaque": False, "Was": None, "Now": "y"},
        {"Name": "v", "Change": "changed", "Opaque": False, "Was": "1", "Now": "2"},
    ]
    assert d.summary() == "3 params"


def test_opaque_params_by_name_only_and_not_counted_as_key_differences():
    d = compare(inputs(opaque=frozenset({"_old"})), inputs(opaque=frozenset({"_token"})))
    assert [p.to_json() for p in d.params] == [
        {"Name": "_old", "Change": "removed", "Opaque": True},
        {"Name": "_token", "Change": "added", "Opaque": True},
    ]
    assert d.summary() == "no difference in files, params or group"
    # unknown on one side (a build older than inputs.json): nothing is claimed
    assert compare(inputs(opaque=None), inputs(opaque=frozenset({"_token"}))).params == ()


def test_the_group_and_a_summary_of_everything():
    d = compare(inputs(files={"a": "file- 1", "b": "file- 2"}, params={"v": "1"}, group="main"),
                inputs(files={"a": "file- 9", "c": "file- 3"}, params={"v": "2"}, group="pr-1"))
    assert d.group == ("main", "pr-1")
    assert d.summary() == "3 files, 1 param, the group"
    out = d.to_json()
    assert out["Group"] == {"Was": "main", "Now": "pr-1"}
    assert out["FilesChanged"] == 3
    assert [f["Path"] for f in out["Files"]] == ["a", "b", "c"]


def test_files_unknown_on_either_side():
    for old, new in ((Inputs("demo", "g", {}, None, None), inputs()),
                     (inputs(), Inputs("demo", "g", {}, None, None))):
        d = compare(old, new)
        assert d.files is None and d.summary() == "files unknown"
        assert d.to_json()["Files"] is None and d.to_json()["FilesChanged"] is None


def test_inputs_are_kept_and_read_back_with_the_record(tmp_path):
    project = tmp_path / "projects" / "demo"
    (project / "sub").mkdir(parents=True)
    (project / "Dockerfile").write_text("FROM scratch\n")
    (project / "sub" / "a.txt").write_text("a")
    layout = Layout(tmp_path / "builds")
    folder = layout.ready("demo", "b1")
    folder.mkdir(parents=True)
    keep_inputs(folder, project, folder_fingerprint(project), ["_token"])
    raw = (folder / INPUTS_FILE).read_text()
    assert SECRET not in raw and "_token" in raw
    got = recorded_inputs(layout, "demo", "b1", {"Params": {"v": "1", "_x": SECRET},
                                                 "Group": "g"})
    assert got.files == files_of(folder_entries(project))
    assert set(got.files) == {"Dockerfile", "sub", "sub/a.txt"}
    assert got.opaque == {"_token"} and got.params == {"v": "1"} and got.group == "g"


def test_a_folder_that_changed_since_the_key_keeps_no_file_list(tmp_path):
    project = tmp_path / "demo"
    project.mkdir()
    (project / "Dockerfile").write_text("FROM scratch\n")
    before = folder_fingerprint(project)
    (project / "Dockerfile").write_text("FROM scratch\nRUN true\n")
    layout = Layout(tmp_path / "builds")
    folder = layout.ready("demo", "b1")
    folder.mkdir(parents=True)
    keep_inputs(folder, project, before, [])
    assert recorded_inputs(layout, "demo", "b1", {}).files is None


@pytest.mark.parametrize("content", [b"", b"not json", b"[]", b'{"Version": 99, "Files": {}}',
                                     b'{"Version": 1, "Files": {"a": 1}, "OpaqueParams": [2]}',
                                     b"[" * 100000])
def test_a_damaged_inputs_file_means_unknown_never_an_error(tmp_path, content):
    layout = Layout(tmp_path)
    folder = layout.ready("demo", "b1")
    folder.mkdir(parents=True)
    (folder / INPUTS_FILE).write_bytes(content)
    got = recorded_inputs(layout, "demo", "b1", {"Params": "nonsense", "Group": 3})
    assert got.files is None and got.opaque is None and got.params == {} and got.group == ""


def test_a_link_in_place_of_the_inputs_file_is_not_followed(tmp_path):
    layout = Layout(tmp_path)
    folder = layout.ready("demo", "b1")
    folder.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"Version": 1, "Files": {"x": "file- 1"}}))
    os.symlink(elsewhere, folder / INPUTS_FILE)
    assert recorded_inputs(layout, "demo", "b1", {}).files is None


def test_keeping_inputs_never_fails_a_build(tmp_path):
    keep_inputs(tmp_path / "no-such-folder", tmp_path / "no-such-project", "x", [])


@pytest.mark.parametrize("value, expected", [
    ({"CacheFrom": {"Project": "p", "Group": "g", "ID": "abc"}}, ("p", "g", "abc")),
    ({"CacheFrom": {"Project": "p", "Group": "", "ID": "abc"}}, ("p", "", "abc")),
    ({"CacheFrom": None}, None),
    ({}, None),
    (None, None),
    ({"CacheFrom": {"Project": "p", "Group": "g", "ID": "../x"}}, None),
    ({"CacheFrom": {"Project": 1, "Group": "g", "ID": "abc"}}, None),
    ({"CacheFrom": "p/g/abc"}, None),
])
def test_cache_source_accepts_only_valid_names(value, expected):
    assert cache_source(value) == expected


def test_a_request_as_query_parameters():
    assert request_from_query([("project", "hello"), ("group", "g"), ("params[name]", "Ada"),
                               ("params[_token]", ""), ("rebuild", "false")]) == {
        "project": "hello", "group": "g", "rebuild": False,
        "params": {"name": "Ada", "_token": ""}}


@pytest.mark.parametrize("args, problem", [
    ([], "send the POST /jobs body"),
    ([("project", "a"), ("project", "b")], "given twice"),
    ([("project", "a"), ("params[v]", "1"), ("params[v]", "2")], "given twice"),
    ([("project", "a"), ("params[_token]", SECRET)], "no place for a secret"),
    ([("project", "a"), ("rebuild", "yes")], "true or false"),
    ([("project", "a"), ("async", "")], "unknown query parameter"),
])
def test_bad_query_parameters_are_refused_in_one_line(args, problem):
    with pytest.raises(BadRequest) as e:
        request_from_query(args)
    assert problem in e.value.message
    assert SECRET not in e.value.message


def test_cache_from_is_kept_by_the_record_and_a_damaged_value_dropped():
    from mistryd.jobs import BuildInfo

    base = {"ID": "b", "Project": "p", "Params": {}, "Group": "g", "Path": "", "URL": "",
            "StartedAt": ""}
    source = {"Project": "p", "Group": "g", "ID": "a"}
    info = BuildInfo.from_json({**base, "CacheFrom": source})
    out = info.to_json()
    assert out["CacheFrom"] == source and out["CacheFrom"] is not info.CacheFrom
    assert BuildInfo.from_json({**base, "CacheFrom": "p/g/a"}).to_json()["CacheFrom"] is None
    assert BuildInfo.from_json(base).to_json()["CacheFrom"] is None
