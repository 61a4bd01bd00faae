"""The Flask app factory: thin blueprints over one Server object."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, jsonify, render_template, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from ..errors import MistryError
from ..server import Server
from .http import SECURITY_HEADERS

if TYPE_CHECKING:
    from . import capacity

HERE = Path(__file__).resolve().parent  # templates and static files ship inside the package


class KeyOrderJSONProvider(DefaultJSONProvider):
    sort_keys = False  # answers keep the order their fields are written in


def create_app(server: Server, request_slots: capacity.SharedCounts | None = None) -> Flask:
    app = Flask("mistryd", template_folder=str(HERE / "templates"),
                static_folder=str(HERE / "static"), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = server.config.max_body_bytes
    app.json = KeyOrderJSONProvider(app)
    app.extensions["mistryd"] = server

    from . import api, apidoc, auth, batches, builder_api, capacity, push, queue_api, views

    capacity.init_app(app, server.config.http_threads, server.metrics, request_slots)
    auth.init_app(app)  # first: every request is checked before any view runs
    app.register_blueprint(apidoc.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(views.bp)
    app.register_blueprint(push.bp)  # webhooks of push builds (docs/push.md)
    app.register_blueprint(queue_api.bp)  # the queue and its builders (docs/distributed.md)
    app.register_blueprint(builder_api.bp)  # builders on other machines: their side
    app.register_blueprint(batches.bp)  # dependency-ordered batches (docs/batches.md)
    _register_optional(app)

    @app.errorhandler(MistryError)
    def mistry_error(e: MistryError):
        response = jsonify(error=e.message)
        response.status_code = e.status
        if e.retry_after:
            response.headers["Retry-After"] = str(e.retry_after)
        return response

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        if e.code == 404 and _browser_wants_html():
            return render_template("error.html", message=f"There is no page at {request.path}."), 404
        response = jsonify(error=f"{e.name}: {e.description}")
        response.status_code = e.code or 500
        if isinstance(e, MethodNotAllowed) and e.valid_methods:
            response.headers["Allow"] = ", ".join(e.valid_methods)
        return response

    @app.after_request
    def security_headers(response):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return app


def _register_optional(app: Flask) -> None:
    """Blueprints of later capabilities register themselves here when their module exists."""
    import importlib

    for name in ("artifacts",):
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            continue
        app.register_blueprint(module.bp)


def _browser_wants_html() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html" and request.accept_mimetypes[best] > request.accept_mimetypes[
        "application/json"]


def server_of(app: Flask) -> Server:
    return app.extensions["mistryd"]
