"""HTML pages for people. Everything from builds is escaped by Jinja2's autoescaping."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

bp = Blueprint("views", __name__)


@bp.get("/")
def dashboard():
    srv = current_app.extensions["mistryd"]
    return render_template("index.html", builds=srv.store.query(limit=50),
                           projects=srv.projects.names())
