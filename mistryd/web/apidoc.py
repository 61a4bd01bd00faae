"""`GET /openapi.yaml`: the OpenAPI description of the HTTP API (shipped in the package)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response

from ..errors import NotFound

bp = Blueprint("apidoc", __name__)

OPENAPI = Path(__file__).resolve().parent / "openapi.yaml"


@bp.get("/openapi.yaml")
def openapi():
    try:
        text = OPENAPI.read_text()
    except FileNotFoundError:
        raise NotFound(f"no API description at {OPENAPI}; reinstall from a checkout") from None
    return Response(text, mimetype="application/yaml")
