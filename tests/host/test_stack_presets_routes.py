"""Stack presets over HTTP in a real ComfyUI: save, list, replace, delete; every malformed request refused.

(Named apart from tests/unit/lora/test_stack_presets.py: test module basenames must be unique.)
"""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.host.test_routes import PREFIXES, assert_error, get_json

ROWS = [{"lora": "style.safetensors", "on": True, "strength_model": 0.8, "strength_clip": 0.5},
        {"lora": "gone/face.safetensors", "on": False, "strength_model": 1.0, "strength_clip": 1.0,
         "block_weights": "INS"}]


def presets_file(host) -> Path:
    return host.base_dir / "user" / "default" / "loralab" / "stack_presets.json"


def put(host, prefix: str, name: str, body: object) -> tuple[int, object]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, answer, _ = get_json(host, "PUT", f"{prefix}/stack-presets/{quote(name, safe='')}", raw)
    return status, answer


def listed(host, prefix: str = "/loralab") -> dict[str, list]:
    status, answer, _ = get_json(host, "GET", f"{prefix}/stack-presets")
    assert status == 200, answer
    return {p["name"]: p["rows"] for p in answer["presets"]}


def every_file(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and p.name != "host.log"}


@pytest.mark.parametrize("prefix", PREFIXES)
def test_round_trip(host, prefix):
    name = f"Portrait set + ünï {prefix[1:4]}"
    assert put(host, prefix, name, {"rows": ROWS}) == (201, {"name": name, "rows": ROWS})
    assert listed(host, prefix)[name] == ROWS
    assert json.loads(presets_file(host).read_text(encoding="utf-8"))["presets"][name] == ROWS

    short = [{"lora": "a.safetensors", "strength": 0.5}]  # the backend's shorthand, stored in full
    full = [{"lora": "a.safetensors", "on": True, "strength_model": 0.5, "strength_clip": 0.5}]
    assert put(host, prefix, name, {"rows": short}) == (200, {"name": name, "rows": full}), "PUT again replaces"
    assert listed(host)[name] == full

    status, answer, _ = get_json(host, "DELETE", f"{prefix}/stack-presets/{quote(name, safe='')}")
    assert (status, answer) == (200, {"deleted": name})
    assert name not in listed(host)
    assert_error(host, "DELETE", f"{prefix}/stack-presets/{quote(name, safe='')}", 404, mentions="No stack preset")


BAD_NAMES = ["..", ".hidden", "..%2F..%2Fescape", "%2e%2e", "a%2Fb", "a%5Cb", "a%00b", "%20lead", "trail%20",
             "x" * 65, "a:b", "a%0Ab"]


@pytest.mark.parametrize("raw_name", BAD_NAMES)
def test_bad_names_are_refused_and_touch_no_file(host, raw_name):
    before = every_file(host.base_dir)
    for method in ("PUT", "DELETE"):
        status, answer, _ = get_json(host, method, f"/api/loralab/stack-presets/{raw_name}",
                                     json.dumps({"rows": ROWS}).encode() if method == "PUT" else None)
        # 404: the router itself refuses a name that decodes to a path with '/' in it.
        assert status in (400, 404), (method, raw_name, status, answer)
        assert status == 404 or "preset name" in answer["error"], answer
    assert every_file(host.base_dir) == before
    assert not (host.base_dir / "user" / "escape").exists() and not (host.base_dir / "escape").exists()


@pytest.mark.parametrize("body, status, mentions", [
    (b"", 400, "not JSON"), (b"{", 400, "not JSON"), (b"\xff\xfe", 400, "not JSON"),
    (json.dumps(ROWS).encode(), 400, '{"rows": [...]}'), (b'{"rows": [], "x": 1}', 400, '{"rows": [...]}'),
    (b'{"rows": {"lora": "a"}}', 400, "JSON list"), (b'{"rows": [{"lora": ""}]}', 400, "'lora' must name"),
    (b'{"rows": [{"lora": "a", "strength_model": NaN}]}', 400, "finite"),
    (b'{"rows": [{"lora": "a", "block_weights": "NOPE"}]}', 400, "row 1"),
    (b'{"rows": [{"lora": "a", "oops": 1}]}', 400, "unknown field"),
    (json.dumps({"rows": [{"lora": "a"}] * 65}).encode(), 400, "at most 64 rows"),
    (json.dumps({"rows": [{"lora": "x" * 70_000}]}).encode(), 413, "at most 65536 bytes")])
def test_bad_bodies_are_refused_and_change_nothing(host, body, status, mentions):
    assert put(host, "/loralab", "kept", {"rows": ROWS})[0] in (200, 201)
    before = presets_file(host).read_bytes()
    assert_error(host, "PUT", "/loralab/stack-presets/kept", status, body, mentions)
    assert presets_file(host).read_bytes() == before


@pytest.mark.parametrize("method, path", [
    ("POST", "/loralab/stack-presets"), ("DELETE", "/loralab/stack-presets"),
    ("POST", "/loralab/stack-presets/x"), ("GET", "/api/loralab/stack-presets/x")])
def test_other_methods_get_405(host, method, path):
    assert_error(host, method, path, 405, mentions="not supported")


def test_a_damaged_file_is_reported_not_overwritten(host):
    path = presets_file(host)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = path.read_bytes() if path.exists() else None
    path.write_text("{ not json")
    try:
        assert_error(host, "GET", "/loralab/stack-presets", 500, mentions="not JSON")
        status, answer, _ = get_json(host, "GET", "/loralab/stack-presets")
        assert str(host.base_dir) not in answer["error"], "the answer names the file inside the user folder only"
        assert "default/loralab/stack_presets.json" in answer["error"].replace("\\", "/")
        assert_error(host, "PUT", "/loralab/stack-presets/new", 500, json.dumps({"rows": []}).encode(), "left as it is")
        assert path.read_text() == "{ not json"
    finally:
        if saved is None:
            path.unlink()
        else:
            path.write_bytes(saved)
