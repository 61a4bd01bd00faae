"""mistryd/web/openapi.yaml against the real server: schemathesis generates requests for every operation
and checks that none gets a 5xx and that status codes, content types, headers and bodies are the
documented ones. Bounded: a few hundred requests in all, no deadline."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

OPENAPI = Path(__file__).resolve().parents[2] / "mistryd" / "web" / "openapi.yaml"
ADMIN = "admin-token-0123456789"
READ = "read-token-0123456789"
TOKENS = [{"name": "ops", "token": ADMIN, "role": "admin"},
          {"name": "viewer", "token": READ, "role": "read"}]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


def bounded(max_examples: int):
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture
def api(start_server):
    """A server with tokens, one finished build, and the schema it serves itself."""
    srv = start_server(tokens=TOKENS)
    built = srv.post_job({"project": "hello"}, headers={"Authorization": f"Bearer {ADMIN}"})
    assert built.status_code == 201, built.text
    schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.yaml")
    return srv, schema, built.json()["ID"]


def run(schema, base_url: str, mode: GenerationMode, headers: dict[str, str],
        per_operation: int, checks=CHECKS, **path_parameters: str) -> int:
    """`per_operation` generated requests for each operation (so each one is tried, however
    many there are), with the given path parameters where the operation has them. Returns how
    many operations were tried."""
    tried = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        names = {p.name for p in operation.path_parameters}
        fixed = {k: v for k, v in path_parameters.items() if k in names}
        strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed or None)

        @bounded(per_operation)
        @given(case=strategy)
        def check(case) -> None:
            case.call_and_validate(base_url=base_url, headers=headers, checks=checks,
                                   timeout=60)

        try:
            check()
        except Unsatisfiable:
            # nothing about this operation can be invalid (no parameters, no body)
            assert mode == GenerationMode.NEGATIVE, operation.label
            continue
        tried += 1
    return tried


def test_the_document_covers_every_route_of_the_server(api):
    srv, _, _ = api
    documented = yaml.safe_load(OPENAPI.read_text())["paths"]
    from mistryd.web import create_app

    app = create_app(srv.server)
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule
        for arg in rule.arguments:
            name = {"build_id": "id", "subpath": "path"}.get(arg, arg)
            path = path.replace(f"<path:{arg}>", f"{{{name}}}").replace(f"<{arg}>", f"{{{name}}}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((method.lower(), path))
    missing = {(m, p) for m, p in routes if m not in documented.get(p, {})}
    assert not missing, f"routes not in mistryd/web/openapi.yaml: {sorted(missing)}"
    extra = {(m, p) for p, ops in documented.items() for m in ops
             if m in ("get", "post", "put", "delete", "patch") and (m, p) not in routes}
    assert not extra, f"documented but not served: {sorted(extra)}"


def test_generated_requests_conform_with_an_admin_token(api):
    srv, schema, _ = api
    run(schema, srv.url, GenerationMode.POSITIVE, {"Authorization": f"Bearer {ADMIN}"}, 10,
        checks=[*CHECKS, ignored_auth])


def test_requests_about_a_real_build_conform(api):
    srv, schema, build_id = api
    run(schema, srv.url, GenerationMode.POSITIVE, {"Authorization": f"Bearer {READ}"}, 5,
        project="hello", id=build_id)
    artifact = schema["/artifacts/{project}/{id}/{path}"]["GET"]
    for headers in ({}, {"Range": "bytes=2-"}, {"Range": "bytes=99-"}):
        case = artifact.Case(path_parameters={"project": "hello", "id": build_id,
                                              "path": "out.txt"}, headers=headers)
        r = case.call_and_validate(base_url=srv.url, checks=CHECKS, timeout=60,
                                   headers={"Authorization": f"Bearer {READ}"})
        assert r.status_code == {"": 200, "bytes=2-": 206, "bytes=99-": 416}[
            headers.get("Range", "")]


def test_invalid_requests_get_4xx_not_5xx(api):
    srv, schema, _ = api
    tried = run(schema, srv.url, GenerationMode.NEGATIVE, {"Authorization": f"Bearer {ADMIN}"}, 5)
    assert tried >= 10  # every operation with parameters or a body


def refused_without_a_token(ctx, response, case) -> bool | None:
    """Every operation but the public ones (`security: []`) answers 401 to a request with no
    token: the generated request carries none, as long as it sends no Authorization or cookie."""
    public = case.operation.definition.raw.get("security") == []
    sent = response.request.headers
    if public or "Authorization" in sent or "mistryd_token" in sent.get("Cookie", ""):
        return None
    assert response.status_code == 401, \
        f"{case.operation.label} answered {response.status_code} to a request without a token"
    return True


def test_without_a_token_every_protected_operation_is_refused_as_documented(api):
    srv, schema, _ = api
    run(schema, srv.url, GenerationMode.POSITIVE, {}, 3,
        checks=[*CHECKS, refused_without_a_token])
    assert requests.get(f"{srv.url}/index/", timeout=10).status_code == 401
