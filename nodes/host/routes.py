"""The training dashboard's HTTP routes under /loralab/ (and /api/loralab/), and its websocket events.

    GET  /loralab/jobs                              job summaries, newest first
    GET  /loralab/jobs/{job_id}                     one job's snapshot
    GET  /loralab/jobs/{job_id}/loss?since=N        loss points after step N (and validation points)
    GET  /loralab/jobs/{job_id}/samples/{name}      a sample PNG the job registered, from its own folder
    POST /loralab/jobs/{job_id}/stop | save | sample   control request (optional JSON object body) -> snapshot
    GET  /loralab/loras/info?name=<name>            what a LoRA file holds (lora_info.summary, parsed once)
    GET  /loralab/loras/blocks?name=<name>&weights=<text>   its blocks, each with its weight under the text
    GET  /loralab/stack-presets                     every named stack preset: [{"name", "rows"}], by name
    PUT  /loralab/stack-presets/{name}              {"rows": [...]} saved under that name (201 new, 200 replaced)
    DELETE /loralab/stack-presets/{name}            removes that preset (404 when there is none)

No route takes a path: jobs are found by an opaque id, samples by a name the job itself registered, LoRA
files by a name the host lists in its loras folders (400 for a malformed name, 404 for one not listed,
200 with "readable": false and the reason for a file that is not a readable LoRA). Stack presets live in
one JSON file in the requesting user's folder (`<user directory>/<user>/loralab/`); a preset name is a key
in it, never a path.
Events: the registry's `loralab.*` snapshots are broadcast with the host's thread-safe `send_sync`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import folder_paths
from aiohttp import web

from ...trainer.errors import LoraWriteError, StackPresetError, StackPresetFileError
from ...trainer.jobs import ACTIONS, Job, JobError, is_job_id, is_sample_name
from ...trainer.lora.stack_presets import StackPresetStore, check_name
from .jobs import JOBS
from .lora_routes import lora_file_blocks, lora_file_info
from .responses import NO_STORE
from .responses import error_answer as _error
from .responses import json_answer as _json

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_SINCE = 10_000_000
MAX_BODY_BYTES = 4096
MAX_PRESET_BODY_BYTES = 64 * 1024  # 64 rows with long names and 61 block weights each fit with room to spare
_registered = False


def _job_id_error(request: web.Request) -> web.Response | None:
    """The 400 answer when the URL's job id is malformed, else None (checked before anything is looked up)."""
    if is_job_id(request.match_info.get("job_id", "")):
        return None
    return _error(400, "A job id is 16 lowercase hexadecimal characters, as listed by GET /loralab/jobs.")


def _job_or_error(request: web.Request) -> Job | web.Response:
    """The job named by the URL, or the 400/404 answer to send instead."""
    bad_id = _job_id_error(request)
    if bad_id is not None:
        return bad_id
    job_id = request.match_info["job_id"]
    job = JOBS.get(job_id)
    if job is None:
        return _error(404, f"No training job {job_id} in this session (only the last 50 jobs are kept).")
    return job


async def list_jobs(request: web.Request) -> web.Response:
    """GET /loralab/jobs: summaries of this session's jobs, newest first."""
    return _json(JOBS.list())


async def job_status(request: web.Request) -> web.Response:
    """GET /loralab/jobs/{job_id}: the job's full snapshot."""
    job = _job_or_error(request)
    return job if isinstance(job, web.Response) else _json(job.snapshot())


async def job_loss(request: web.Request) -> web.Response:
    """GET /loralab/jobs/{job_id}/loss?since=N: [[step, loss, smoothed], ...] for steps after N (default 0)."""
    # The request's form is checked before the job is looked up: a malformed request is a 400 either way.
    bad = _job_id_error(request)
    if bad is not None:
        return bad
    values = request.query.getall("since", [])
    raw = values[0] if len(values) == 1 else ("" if values else "0")
    # isdigit alone would accept '²' and other Unicode digits; the length cap refuses huge numbers unparsed.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 8 and int(raw) <= MAX_SINCE):
        return _error(400, f"'since' must be one whole number of steps from 0 to {MAX_SINCE}; got {raw[:40]!r}.")
    job = _job_or_error(request)
    if isinstance(job, web.Response):
        return job
    since = int(raw)
    return _json({"id": job.id, "since": since, "points": job.loss_history(since),
                  "validation": job.validation_history(since)})


async def job_sample(request: web.Request) -> web.StreamResponse:
    """GET /loralab/jobs/{job_id}/samples/{name}: one of the job's sample images (image/png)."""
    bad = _job_id_error(request)
    if bad is not None:
        return bad
    name = request.match_info.get("name", "")
    if not is_sample_name(name):
        return _error(400, "A sample name is a bare file name of letters, digits, '_', '.' or '-' ending in .png.")
    job = _job_or_error(request)
    if isinstance(job, web.Response):
        return job
    path = job.sample_path(name)
    if path is None:
        return _error(404, f"Job {job.id} has no sample named {name!r}.")
    # no-cache, not no-store: the browser may keep the image and revalidate it (Last-Modified -> 304).
    return web.FileResponse(path, headers={"Content-Type": "image/png", "Cache-Control": "no-cache",
                                           "X-Content-Type-Options": "nosniff"})


async def _read_optional_json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object body ({} when there is none), or the 400/413 answer to send instead."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _error(413, f"The request body is larger than {MAX_BODY_BYTES} bytes; send {{}} or nothing.")
    body = await request.content.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        return _error(413, f"The request body is larger than {MAX_BODY_BYTES} bytes; send {{}} or nothing.")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _error(400, "The request body is not JSON; send {} or nothing.")
    if not isinstance(data, dict):
        return _error(400, "The request body must be a JSON object; send {} or nothing.")
    return data


# --- stack presets --------------------------------------------------------------------------------------
_preset_stores: dict[str, StackPresetStore] = {}  # one per user folder, so saves of one user queue on one lock


def _preset_store(request: web.Request) -> StackPresetStore | web.Response:
    """The store in the requesting user's folder (the host's user manager names the user), or a 403."""
    from server import PromptServer

    manager = getattr(PromptServer.instance, "user_manager", None)
    try:
        user = manager.get_request_user_id(request) if manager is not None else "default"
    except KeyError:
        return _error(403, "Unknown user: choose a user in the editor (the Comfy-User header names one the host has).")
    root = os.path.abspath(folder_paths.get_user_directory())
    public = getattr(folder_paths, "get_public_user_directory", None)  # refuses the host's system users
    user_root = public(user) if public is not None else os.path.join(root, user)
    if user_root is None or os.path.dirname(os.path.abspath(user_root)) != root:
        return _error(403, "Unknown user: stack presets are kept in a user's own folder.")
    folder = os.path.join(os.path.abspath(user_root), "loralab")
    return _preset_stores.setdefault(folder, StackPresetStore(folder))


def _preset_failure(store: StackPresetStore, error: StackPresetFileError | LoraWriteError) -> web.Response:
    """A 500 for the host's own file (damaged or unwritable), naming it inside the user folder, not by full path."""
    shown = os.path.relpath(store.path, os.path.dirname(os.path.dirname(store.folder)))
    return _error(500, str(error).replace(store.path, shown))


def _preset_name_or_error(request: web.Request) -> str | web.Response:
    try:
        return check_name(request.match_info.get("name", ""))
    except StackPresetError as e:
        return _error(400, str(e))


async def list_stack_presets(request: web.Request) -> web.Response:
    """GET /loralab/stack-presets: {"presets": [{"name", "rows"}, ...]} sorted by name."""
    store = _preset_store(request)
    if isinstance(store, web.Response):
        return store
    try:
        presets = await asyncio.get_running_loop().run_in_executor(None, store.list)
    except StackPresetFileError as e:
        return _preset_failure(store, e)
    return _json({"presets": presets})


async def _read_rows_body(request: web.Request) -> object | web.Response:
    """The "rows" of a {"rows": [...]} body (checked by the store), or the 400/413 answer to send instead."""
    too_big = _error(413, f"A preset body is at most {MAX_PRESET_BODY_BYTES} bytes.")
    if request.content_length is not None and request.content_length > MAX_PRESET_BODY_BYTES:
        return too_big
    body = await request.content.read(MAX_PRESET_BODY_BYTES + 1)
    if len(body) > MAX_PRESET_BODY_BYTES:
        return too_big
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _error(400, 'The request body is not JSON; send {"rows": [...]} with the Stack LoRAs rows.')
    if not isinstance(data, dict) or set(data) != {"rows"}:
        return _error(400, 'The request body must be {"rows": [...]}: one key, the Stack LoRAs rows.')
    return data["rows"]


async def save_stack_preset(request: web.Request) -> web.Response:
    """PUT /loralab/stack-presets/{name} with {"rows": [...]}: saves the rows under the name."""
    name = _preset_name_or_error(request)
    if isinstance(name, web.Response):
        return name
    rows = await _read_rows_body(request)
    if isinstance(rows, web.Response):
        return rows
    store = _preset_store(request)
    if isinstance(store, web.Response):
        return store
    try:
        new = await asyncio.get_running_loop().run_in_executor(None, store.save, name, rows)
        saved = await asyncio.get_running_loop().run_in_executor(None, store.get, name)
    except StackPresetError as e:
        return _error(400, str(e))
    except (StackPresetFileError, LoraWriteError) as e:
        return _preset_failure(store, e)
    return _json({"name": name, "rows": saved}, 201 if new else 200)


async def delete_stack_preset(request: web.Request) -> web.Response:
    """DELETE /loralab/stack-presets/{name}: removes the preset."""
    name = _preset_name_or_error(request)
    if isinstance(name, web.Response):
        return name
    store = _preset_store(request)
    if isinstance(store, web.Response):
        return store
    try:
        deleted = await asyncio.get_running_loop().run_in_executor(None, store.delete, name)
    except (StackPresetFileError, LoraWriteError) as e:
        return _preset_failure(store, e)
    if not deleted:
        return _error(404, f"No stack preset named {name!r}.")
    return _json({"deleted": name})


def _control(action: str) -> Handler:
    """POST /loralab/jobs/{job_id}/<action>: queues the request for the trainer and returns the snapshot."""
    async def handler(request: web.Request) -> web.Response:
        bad = _job_id_error(request)
        if bad is not None:
            return bad
        body = await _read_optional_json_object(request)
        if isinstance(body, web.Response):
            return body
        job = _job_or_error(request)
        if isinstance(job, web.Response):
            return job
        try:
            job.request(action)
        except JobError as e:
            return _error(409, str(e))
        return _json(job.snapshot())

    handler.__name__ = f"job_{action}"
    handler.__doc__ = f"POST /loralab/jobs/{{job_id}}/{action}: queues '{action}'; returns the snapshot."
    return handler


def _broadcast(server: Any) -> Callable[[str, dict[str, Any]], None]:
    """A publisher for the job registry: every event to every connected client (send_sync is thread-safe)."""
    def publish(event: str, data: dict[str, Any]) -> None:
        server.send_sync(event, data)
    return publish


def _method_not_allowed(allowed: str) -> Handler:
    """A catch-all for the other methods of a path, so they get 405, not the host's static-file 404."""
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"error": f"{request.method} is not supported here; use {allowed}."},
                                 status=405, headers={**NO_STORE, "Allow": allowed})
    return handler


def register_routes() -> bool:
    """Adds the routes to the running host's server and wires job events to its websocket.

    Call at import of the node package: the host copies its route table (adding /api/ twins) after
    custom nodes load. Returns False, doing nothing, when no server is running (tests, a CLI).
    """
    global _registered
    if _registered:
        return True
    try:
        from server import PromptServer
    except ImportError:
        return False
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return False
    routes = server.routes
    # Each path's "*" route must follow its own route directly: aiohttp then puts both on one resource,
    # and any other method lands on the catch-all instead of falling through to the host's static files.
    for path, handler in (("/loralab/jobs", list_jobs), ("/loralab/jobs/{job_id}", job_status),
                          ("/loralab/jobs/{job_id}/loss", job_loss),
                          ("/loralab/jobs/{job_id}/samples/{name}", job_sample),
                          ("/loralab/loras/info", lora_file_info), ("/loralab/loras/blocks", lora_file_blocks)):
        routes.get(path)(handler)
        routes.route("*", path)(_method_not_allowed("GET"))
    routes.get("/loralab/stack-presets")(list_stack_presets)
    routes.route("*", "/loralab/stack-presets")(_method_not_allowed("GET"))
    routes.put("/loralab/stack-presets/{name}")(save_stack_preset)
    routes.delete("/loralab/stack-presets/{name}")(delete_stack_preset)
    routes.route("*", "/loralab/stack-presets/{name}")(_method_not_allowed("PUT, DELETE"))
    for action in sorted(ACTIONS):
        path = f"/loralab/jobs/{{job_id}}/{action}"
        routes.post(path)(_control(action))
        routes.route("*", path)(_method_not_allowed("POST"))
    JOBS.set_publisher(_broadcast(server))
    _registered = True
    logger.debug("LoRA Lab routes registered under /loralab/")
    return True
