"""The manifest's columns form (mistryd.web.artifacts._write_columns) from a manifest file, across
several spooled batches: the same values in the same order as the entries."""

from __future__ import annotations

import io
import json
import tempfile

from mistryd.web import artifacts


def test_columns_are_the_entries_fields_across_batches(monkeypatch):
    entries = [{"path": f"d/f{i}", "mode": 0o644, "size": i, "mtime": 1, "type": "file",
                "sha256": f"s{i}", "blake3": f"b{i}"} for i in range(10)]
    entries.insert(0, {"path": "d", "mode": 0o755, "size": 0, "mtime": 1, "type": "dir"})
    entries.append({"path": "l", "mode": 0o777, "size": 0, "mtime": 1, "type": "symlink",
                    "target": "d/f1"})
    with tempfile.TemporaryFile() as f:
        f.write(b'{"project":"p","id":"i","entries":[\n'
                + b"".join((b"," if n else b"") + artifacts._json(e) + b"\n"
                           for n, e in enumerate(entries))
                + b'],"total_size":45}\n')
        manifest = artifacts._Manifest(f, 0, f.tell())
        monkeypatch.setattr(artifacts, "COLUMN_BATCH", 3)  # 12 entries: four batches
        out = io.BytesIO()
        artifacts._write_columns(out, manifest, type("Build", (), {"label": "p/i"})())
    columns = json.loads(out.getvalue())
    assert (columns["project"], columns["id"], columns["count"], columns["total_size"]) == (
        "p", "i", 12, 45)
    for name in artifacts.COLUMNS:
        assert columns[name] == [e.get(name, "") for e in entries], name
