"""What upstream mistry's Go client sends and expects, byte for byte where it matters: its
JobRequest JSON, a 201 with a BuildInfo its struct decodes (field names and JSON types), and
`?async` accepted with any body it ignores. (Upstream's client itself cannot be fetched on these
machines; this pins the wire contract it relies on.)"""

from datetime import datetime

import requests

# the JSON types of upstream's BuildInfo struct fields (Go: encoding/json)
UPSTREAM_FIELDS = {
    "Params": dict, "Group": str, "Path": str, "Cached": bool, "Coalesced": bool,
    "Incremental": bool, "ExitCode": int, "ErrBuild": str, "ContainerStdouterr": str,
    "ContainerStderr": str, "TransportMethod": str, "StartedAt": str, "Duration": int, "URL": str,
}


def test_the_go_clients_request_and_the_buildinfo_it_decodes(start_server):
    srv = start_server()
    body = b'{"project":"hello","params":{"name":"go"},"group":"","rebuild":false}'
    r = requests.post(f"{srv.url}/jobs", data=body, timeout=120, headers={
        "Content-Type": "application/json", "Accept": "application/json",
        "User-Agent": "Go-http-client/1.1"})
    assert r.status_code == 201
    info = r.json()
    for name, kind in UPSTREAM_FIELDS.items():
        assert isinstance(info[name], kind) and not (kind is int and isinstance(info[name], bool)), name
    assert datetime.fromisoformat(info["StartedAt"].replace("Z", "+00:00"))  # RFC 3339
    assert info["URL"] == f"job/hello/{info['ID']}" and info["Path"].endswith("/data/artifacts")
    assert info["TransportMethod"] == "rsync"
    # the client then fetches <Path> over rsync/scp: it is the artifacts folder on the server
    assert (srv.build_path / "hello" / "ready" / info["ID"] / "data" / "artifacts").samefile(
        info["Path"])


def test_async_submit_as_the_go_client_does_it(start_server):
    srv = start_server()
    r = requests.post(f"{srv.url}/jobs?async", data=b'{"project":"hello","params":{}}',
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 201  # upstream's client checks only the status


def test_unknown_project_and_overload_messages_the_go_client_prints(start_server):
    srv = start_server()
    r = srv.post_job({"project": "nope"})
    assert r.status_code == 404 and r.json()["error"] == "Unknown project 'nope'"
