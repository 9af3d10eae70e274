"""The /loralab/ routes in a real ComfyUI: the job list and every malformed request, under both prefixes.

Tests with a live training job (status, loss, samples, control posts) live with the Train LoRA tests;
they check answers with `fetch_job_status` / `fetch_loss_history` / `assert_job_status` from here.
"""
from __future__ import annotations

import json
from typing import Any

import pytest

PREFIXES = ("/loralab", "/api/loralab")
UNKNOWN_ID = "0123456789abcdef"  # well-formed, never issued
ACTIONS = ("stop", "save", "sample")
STATES = {"queued", "running", "done", "stopped", "interrupted", "error"}

NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))
STATUS_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,), "name": (str,), "state": (str,), "step": (int,), "total": (int,),
    "loss": OPTIONAL_NUMBER, "smoothed_loss": OPTIONAL_NUMBER, "validation_loss": OPTIONAL_NUMBER,
    "validation_step": (int, type(None)), "lr": OPTIONAL_NUMBER, "steps_per_second": OPTIONAL_NUMBER,
    "eta_seconds": OPTIONAL_NUMBER, "memory_bytes": (int, type(None)), "samples": (list,), "checkpoints": (list,),
    "error": (str, type(None)), "lora_name": (str, type(None)), "created_at": NUMBER,
    "started_at": OPTIONAL_NUMBER, "updated_at": NUMBER, "pending_requests": (list,),
}


# --- helpers for tests with a live job ---------------------------------------------------------------
def assert_job_status(snapshot: dict[str, Any], job_id: str | None = None) -> None:
    """Checks a job snapshot (route answer or websocket event data) against the documented schema."""
    missing = set(STATUS_FIELDS) - set(snapshot)
    assert not missing, f"status lacks {sorted(missing)}: {snapshot}"
    for key, types in STATUS_FIELDS.items():
        assert isinstance(snapshot[key], types) and not isinstance(snapshot[key], bool), (key, snapshot[key])
    if job_id is not None:
        assert snapshot["id"] == job_id
    assert snapshot["state"] in STATES
    assert 0 <= snapshot["step"] and snapshot["total"] >= 1
    assert set(snapshot["pending_requests"]) <= set(ACTIONS)
    if snapshot["state"] == "error":
        assert snapshot["error"]
    for sample in snapshot["samples"]:
        assert set(sample) == {"step", "name", "label", "url"}, sample
        assert sample["url"] == f"/loralab/jobs/{snapshot['id']}/samples/{sample['name']}"
    for checkpoint in snapshot["checkpoints"]:
        assert set(checkpoint) == {"step", "lora_name"} and isinstance(checkpoint["lora_name"], str)


def get_json(host, method: str, path: str, body: bytes | None = None) -> tuple[int, Any, dict[str, str]]:
    """(status, decoded JSON body, headers); asserts the answer is JSON and never cached."""
    status, raw, headers = host.request(method, path, body, {"Content-Type": "application/json"} if body else None)
    assert headers.get("Content-Type", "").startswith("application/json"), (method, path, status, raw[:200])
    assert headers.get("Cache-Control") == "no-store", (method, path, headers)
    return status, json.loads(raw), headers


def fetch_job_status(host, job_id: str) -> dict[str, Any]:
    """The job's status from both prefixes (checked against the schema); returns the /api one."""
    for prefix in PREFIXES:
        status, snapshot, _ = get_json(host, "GET", f"{prefix}/jobs/{job_id}")
        assert status == 200, snapshot
        assert_job_status(snapshot, job_id)
    listed = get_json(host, "GET", "/api/loralab/jobs")[1]
    assert job_id in [j["id"] for j in listed]
    return snapshot


def fetch_loss_history(host, job_id: str, since: int = 0) -> list[list[Any]]:
    """[[step, loss, smoothed], ...] after `since`, checked for shape and order."""
    status, answer, _ = get_json(host, "GET", f"/api/loralab/jobs/{job_id}/loss?since={since}")
    assert status == 200, answer
    assert answer["id"] == job_id and answer["since"] == since and isinstance(answer["validation"], list)
    steps = [point[0] for point in answer["points"]]
    assert all(len(point) == 3 for point in answer["points"]) and steps == sorted(steps)
    assert all(step > since for step in steps)
    return answer["points"]


def assert_error(host, method: str, path: str, expected: int, body: bytes | None = None,
                 mentions: str = "") -> None:
    status, answer, _ = get_json(host, method, path, body)
    assert status == expected, (method, path, status, answer)
    assert isinstance(answer.get("error"), str) and mentions in answer["error"], answer


# --- tests -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", PREFIXES)
def test_job_list_is_a_json_list(host, prefix):
    status, jobs, _ = get_json(host, "GET", f"{prefix}/jobs")
    assert status == 200 and isinstance(jobs, list)
    for job in jobs:
        assert {"id", "name", "state", "step", "total"} <= set(job)


BAD_IDS = ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", UNKNOWN_ID + "0", UNKNOWN_ID[:-1],
           UNKNOWN_ID.upper(), "zzzzzzzzzzzzzzzz", UNKNOWN_ID + "%00", UNKNOWN_ID + "%0a", "%20" + UNKNOWN_ID[1:],
           "a" * 300]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_malformed_job_ids_get_400_on_every_route(host, prefix, bad_id):
    base = f"{prefix}/jobs/{bad_id}"
    for method, path in [("GET", base), ("GET", f"{base}/loss?since=0"), ("GET", f"{base}/samples/s_1.png"),
                         *[("POST", f"{base}/{action}") for action in ACTIONS]]:
        assert_error(host, method, path, 400, mentions="16 lowercase hexadecimal")


@pytest.mark.parametrize("path", ["/loralab/jobs/%2e%2e/%2e%2e/etc/passwd", "/loralab/jobs/../../etc/passwd",
                                  "/api/loralab/jobs/..%2f..%2f..%2fetc/passwd",
                                  f"/loralab/jobs/{UNKNOWN_ID}/samples/../../../etc/passwd",
                                  f"/loralab/jobs/{UNKNOWN_ID}/samples/%2e%2e/%2e%2e/main.py"])
def test_traversal_that_the_router_normalises_reaches_no_file(host, path):
    status, body, _ = host.request("GET", path)
    assert 400 <= status < 500, (path, status)
    assert b"root:" not in body and b"PromptServer" not in body


@pytest.mark.parametrize("prefix", PREFIXES)
def test_unknown_job_ids_get_404(host, prefix):
    base = f"{prefix}/jobs/{UNKNOWN_ID}"
    assert_error(host, "GET", base, 404, mentions=UNKNOWN_ID)
    assert_error(host, "GET", f"{base}/loss?since=0", 404)
    assert_error(host, "GET", f"{base}/loss", 404)
    assert_error(host, "GET", f"{base}/samples/s_000010.png", 404)
    for action in ACTIONS:
        assert_error(host, "POST", f"{base}/{action}", 404)
        assert_error(host, "POST", f"{base}/{action}", 404, body=b"{}")


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("since", ["-1", "99999999999999999999", "10000001", "abc", "1.5", "1e3", "", "%C2%B2",
                                   "0x10", "%2B5", "5%20", "0&since=1"])
def test_bad_since_gets_400(host, prefix, since):
    assert_error(host, "GET", f"{prefix}/jobs/{UNKNOWN_ID}/loss?since={since}", 400, mentions="'since'")


@pytest.mark.parametrize("since", ["0", "10000000"])
def test_since_bounds_are_accepted(host, since):
    assert_error(host, "GET", f"/loralab/jobs/{UNKNOWN_ID}/loss?since={since}", 404)  # well-formed; no such job


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("name", ["..%2F..%2Fx.png", "%2e%2e", "..", "x.jpg", "x.PNG", "a%20b.png", "%2Fetc%2Fpasswd",
                                  ".png", "x" * 129 + ".png", "x.png%00", "%C3%A9.png", "x.png.exe", "x%5Cy.png"])
def test_bad_sample_names_get_400(host, prefix, name):
    assert_error(host, "GET", f"{prefix}/jobs/{UNKNOWN_ID}/samples/{name}", 400, mentions="ending in .png")


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("action", ACTIONS)
def test_control_posts_refuse_bodies_that_are_not_a_json_object(host, prefix, action):
    path = f"{prefix}/jobs/{UNKNOWN_ID}/{action}"
    assert_error(host, "POST", path, 400, body=b"stop please", mentions="not JSON")
    assert_error(host, "POST", path, 400, body=b"\xff\xfe", mentions="not JSON")
    assert_error(host, "POST", path, 400, body=b"[1, 2]", mentions="JSON object")
    assert_error(host, "POST", path, 413, body=b'{"pad": "' + b"x" * 10_000 + b'"}')
    assert_error(host, "POST", path, 404, body=b" \n")  # blank body = no body; then: no such job


@pytest.mark.parametrize("method, path, allowed", [
    ("DELETE", "/loralab/jobs", "GET"), ("POST", "/loralab/jobs", "GET"),
    ("PUT", f"/loralab/jobs/{UNKNOWN_ID}", "GET"), ("DELETE", f"/api/loralab/jobs/{UNKNOWN_ID}", "GET"),
    ("POST", f"/loralab/jobs/{UNKNOWN_ID}/loss", "GET"), ("PUT", f"/loralab/jobs/{UNKNOWN_ID}/samples/s_1.png", "GET"),
    ("GET", f"/loralab/jobs/{UNKNOWN_ID}/stop", "POST"), ("GET", f"/api/loralab/jobs/{UNKNOWN_ID}/save", "POST"),
    ("DELETE", f"/loralab/jobs/{UNKNOWN_ID}/sample", "POST"), ("PATCH", f"/api/loralab/jobs/{UNKNOWN_ID}/stop", "POST"),
])
def test_wrong_methods_get_405(host, method, path, allowed):
    status, answer, headers = get_json(host, method, path)
    assert status == 405 and headers.get("Allow") == allowed and method in answer["error"], (status, answer)
