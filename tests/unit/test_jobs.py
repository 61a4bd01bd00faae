import pytest

from mistryd.errors import BadRequest
from mistryd.jobs import BuildInfo, JobRequest, job_key


def test_keys_match_case_insensitively_as_upstream():
    r = JobRequest.from_json({"Project": "p", "PARAMS": {"a": "1"}, "Group": "g", "Rebuild": True})
    assert (r.project, r.params, r.group, r.rebuild) == ("p", {"a": "1"}, "g", True)


@pytest.mark.parametrize("body, message", [
    ([], "JSON object"),
    ({}, "'project' is required"),
    ({"project": ""}, "'project' is required"),
    ({"project": 3}, "'project' is required"),
    ({"project": "p", "params": []}, "'params' must be an object"),
    ({"project": "p", "params": {"a": 1}}, "param 'a' must be a string"),
    ({"project": "p", "group": 5}, "'group' must be a string"),
    ({"project": "p", "rebuild": "yes"}, "'rebuild' must be true or false"),
    ({"project": "p", "colour": "red"}, "unknown field(s) colour"),
    ({"project": "../etc"}, "must not contain '/'"),
    ({"project": "a/b"}, "must not contain '/'"),
    ({"project": "p", "group": "a..b"}, "must not contain '..'"),
    ({"project": "p", "group": ".hidden"}, "must not start with '.'"),
    ({"project": "p", "params": {"a/b": "x"}}, "must not contain '/'"),
    ({"project": "p", "params": {"x\u0000y": "x"}}, "must not contain NUL"),
    ({"project": "p", "params": {"..": "x"}}, "must not start with '.'"),
    ({"project": "p", "params": {"k" * 300: "x"}}, "at most 255 bytes"),
])
def test_bad_requests_say_what_is_wrong(body, message):
    with pytest.raises(BadRequest) as e:
        JobRequest.from_json(body)
    assert message in e.value.message


def key(project="p", params=None, group="", fp="f" * 64):
    return job_key(JobRequest(project, params or {}, group), fp)


def test_key_is_stable_and_sensitive_to_each_input():
    base = key(params={"a": "1"})
    assert base == key(params={"a": "1"})
    assert len(base) == 64
    assert base != key(params={"a": "2"})
    assert base != key(params={"a": "1"}, group="g")
    assert base != key(project="q", params={"a": "1"})
    assert base != key(params={"a": "1"}, fp="e" * 64)


def test_key_ignores_opaque_params_but_not_their_absence_elsewhere():
    assert key(params={"a": "1", "_token": "x"}) == key(params={"a": "1", "_token": "y"})
    assert key(params={"a": "1", "_token": "x"}) == key(params={"a": "1"})


def test_key_cannot_be_forged_by_moving_text_between_fields():
    # upstream concatenated project + group + params: "ab"+"c" == "a"+"bc"
    assert key(project="ab", group="c") != key(project="a", group="bc")
    assert key(params={"a": "bc"}) != key(params={"ab": "c"})
    assert key(params={"a": "1", "b": "2"}) != key(params={"a": "1b2"})


def test_key_does_not_depend_on_param_order():
    assert key(params={"a": "1", "b": "2"}) == key(params={"b": "2", "a": "1"})


def test_build_info_round_trips_and_ignores_unknown_fields():
    info = BuildInfo(ID="i", Project="p", Params={}, Group="", Path="/x", URL="job/p/i",
                     StartedAt="2026-01-01T00:00:00Z", ExitCode=0)
    raw = info.to_json() | {"Future": 1}
    assert BuildInfo.from_json(raw) == info
    assert info.succeeded
