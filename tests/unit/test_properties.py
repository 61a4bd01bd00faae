"""Property tests (hypothesis) for the two things every request goes through: the job key and
the validation of names that become path components."""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from mistryd.errors import BadRequest
from mistryd.jobs import JobRequest, job_key
from mistryd.names import MAX_NAME_BYTES, check_name, name_problem

# Text that is often made of the characters that matter here: separators, dots, NUL, quotes,
# braces and commas (the JSON of the key), and now and then anything at all.
TRICKY = st.sampled_from(list("./\\\0\n\"{}:,_ ") + ["..", "é", "\u2028", "\udcff"])
tricky_text = st.lists(TRICKY | st.characters(codec="utf-8") | st.sampled_from(string.ascii_letters),
                       max_size=12).map("".join)
params = st.dictionaries(tricky_text, tricky_text, max_size=5)
fingerprints = st.text(alphabet="0123456789abcdef", min_size=1, max_size=64)


@st.composite
def requests_(draw) -> JobRequest:
    return JobRequest(project=draw(tricky_text), params=draw(params), group=draw(tricky_text))


# --- the job key ---------------------------------------------------------------------------------


@given(requests_(), fingerprints)
def test_key_is_stable_and_a_sha256(request, fingerprint):
    key = job_key(request, fingerprint)
    assert key == job_key(request, fingerprint)
    assert key == job_key(JobRequest(request.project, dict(request.params), request.group,
                                     rebuild=not request.rebuild), fingerprint)
    assert len(key) == 64 and set(key) <= set("0123456789abcdef")


@given(requests_(), fingerprints, st.randoms(use_true_random=False))
def test_key_does_not_depend_on_param_order(request, fingerprint, rnd):
    items = list(request.params.items())
    rnd.shuffle(items)
    shuffled = JobRequest(request.project, dict(items), request.group)
    assert job_key(shuffled, fingerprint) == job_key(request, fingerprint)


@given(requests_(), fingerprints, st.dictionaries(tricky_text.map(lambda k: "_" + k), tricky_text,
                                                   min_size=1, max_size=4))
def test_opaque_params_do_not_change_the_key(request, fingerprint, opaque):
    with_opaque = JobRequest(request.project, {**request.params, **opaque}, request.group)
    assert job_key(with_opaque, fingerprint) == job_key(request, fingerprint)


def _identity(request: JobRequest, fingerprint: str) -> tuple:
    return (request.project, fingerprint, request.group, tuple(request.key_params().items()))


@settings(max_examples=300)
@given(requests_(), fingerprints, requests_(), fingerprints)
@example(JobRequest("ab", {}, "c"), "f", JobRequest("a", {}, "bc"), "f")
@example(JobRequest("a", {"b": "c"}, ""), "f", JobRequest("a", {"bc": ""}, ""), "f")
@example(JobRequest("a", {"x": "1", "y": "2"}, ""), "f", JobRequest("a", {"x": "1,y=2"}, ""), "f")
@example(JobRequest("a", {}, ""), "bc", JobRequest("ab", {}, ""), "c")
@example(JobRequest('a","group":"b', {}, ""), "f", JobRequest("a", {}, "b"), "f")
def test_different_jobs_never_share_a_key(one, fp_one, two, fp_two):
    """Injective over field boundaries: moving text from one field to the next (which upstream's
    plain concatenation did not notice) always makes another key."""
    assume(_identity(one, fp_one) != _identity(two, fp_two))
    assert job_key(one, fp_one) != job_key(two, fp_two)


@given(tricky_text, tricky_text, tricky_text, fingerprints)
def test_splitting_the_same_text_between_fields_changes_the_key(a, b, c, fingerprint):
    whole = a + b + c
    splits = {(whole[:i], whole[i:j], whole[j:]) for i in range(len(whole) + 1)
              for j in range(i, len(whole) + 1)}
    assume(len(splits) > 1)
    keys = {job_key(JobRequest(p, {"k": v}, g), fingerprint) for p, g, v in splits}
    assert len(keys) == len(splits)


# --- names that become path components -----------------------------------------------------------


names = tricky_text | st.text(max_size=300) | st.sampled_from([".", "..", "a/..", "...", "a..b",
                                                                ".hidden", "x" * 256, "é" * 128])


@settings(max_examples=500)
@given(names)
def test_accepted_names_are_one_safe_path_component(name):
    if name_problem(name) is not None:
        return
    assert "/" not in name and "\\" not in name and "\0" not in name
    assert ".." not in name and not name.startswith(".")
    assert name not in ("", ".", "..")
    assert not any(ord(c) < 32 for c in name)
    assert len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES


@given(names)
def test_accepted_names_stay_inside_their_root(tmp_path_factory, name):
    assume(name_problem(name) is None)
    root = Path("/srv/mistry/builds")
    joined = root / name
    assert joined.parent == root and joined.name == name
    assert os.path.normpath(joined) == str(joined)
    assert os.path.commonpath([root, os.path.abspath(joined)]) == str(root)
    real_root = tmp_path_factory.getbasetemp().resolve()
    try:
        resolved = (real_root / name).resolve()
    except (ValueError, UnicodeEncodeError):  # a name the OS cannot spell is not a way out
        return
    assert resolved.parent == real_root


@given(names | st.integers() | st.none() | st.lists(st.text(), max_size=2))
def test_check_name_refuses_exactly_what_name_problem_names(name):
    problem = name_problem(name)
    if problem is None:
        assert check_name("project", name) == name
    else:
        with pytest.raises(BadRequest, match="project"):
            check_name("project", name)


@given(st.sampled_from(["/", "\\", "\0", "..", "\n"]), tricky_text, tricky_text)
def test_a_dangerous_piece_anywhere_is_refused(piece, before, after):
    assert name_problem(before + piece + after) is not None
