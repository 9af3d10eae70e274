"""A training run watched and steered live, as the dashboard does it: websocket events and control posts."""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import aiohttp

from scripts.training_graphs import train_graph, wait_for_step
from tests.host.test_routes import assert_job_status, fetch_loss_history

STEPS = 40


class EventRecorder:
    """Collects the pack's websocket events (with arrival times) on a background thread."""

    def __init__(self, url: str, client_id: str) -> None:
        self.url = url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
        self.events: list[tuple[float, str, dict]] = []
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)

    async def _listen(self) -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(self.url) as ws:
            self.connected.set()
            while not self._stop.is_set():
                try:
                    message = await ws.receive(timeout=0.2)
                except asyncio.TimeoutError:
                    continue
                if message.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(message.data)
                    if data["type"].startswith("loralab."):
                        self.events.append((time.monotonic(), data["type"], data["data"]))
                elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return

    def __enter__(self) -> EventRecorder:
        self._thread.start()
        assert self.connected.wait(10), "websocket did not connect"
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def of_type(self, event: str) -> list[dict]:
        return [data for _, kind, data in self.events if kind == event]


def test_events_controls_and_stop_and_save(host, rings):
    client_id = uuid.uuid4().hex
    options = {"sample_every": 0, "checkpoint_every": 0}
    with EventRecorder(host.url, client_id) as recorder:
        prompt_id = host.queue(train_graph("live", steps=STEPS, lr=1e-3, options=options)[0].nodes, client_id)
        job_id = wait_for_step(host, "live", 2)["id"]
        status, snapshot = host.post_json(f"/loralab/jobs/{job_id}/save", {})
        assert status == 200 and "save" in snapshot["pending_requests"]
        status, _ = host.post_json(f"/api/loralab/jobs/{job_id}/sample", {})
        assert status == 200
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            snapshot = host.get_json(f"/loralab/jobs/{job_id}")
            if snapshot["samples"] and snapshot["checkpoints"]:
                break
            time.sleep(0.1)
        snapshot = host.get_json(f"/loralab/jobs/{job_id}")
        assert_job_status(snapshot, job_id)
        assert snapshot["state"] == "running" and snapshot["checkpoints"] and snapshot["samples"]
        assert snapshot["steps_per_second"] > 0 and snapshot["eta_seconds"] is not None
        history = fetch_loss_history(host, job_id)
        assert [point[0] for point in history] == list(range(1, len(history) + 1))
        assert fetch_loss_history(host, job_id, since=len(history) - 1)[0][0] == len(history)
        status, _ = host.post_json(f"/loralab/jobs/{job_id}/stop", {})
        assert status == 200
        entry = host.wait(prompt_id)
        time.sleep(0.5)  # the last events are in flight
    assert entry["status"]["status_str"] == "success"
    final = host.get_json(f"/loralab/jobs/{job_id}")
    assert final["state"] == "stopped" and final["step"] < STEPS
    assert final["lora_name"] == f"live-step{final['step']}.safetensors"
    assert (host.loras_dir / final["lora_name"]).exists()
    # Events: progress at most a few per second, samples/checkpoints/finish at once.
    progress_times = [t for t, kind, _ in recorder.events if kind == "loralab.progress"]
    assert progress_times, "no progress events"
    span = max(progress_times[-1] - progress_times[0], 1e-3)
    assert len(progress_times) <= 5 * span + 2, f"{len(progress_times)} progress events in {span:.1f}s"
    assert recorder.of_type("loralab.sample") and recorder.of_type("loralab.checkpoint")
    assert recorder.of_type("loralab.finished")[-1]["state"] == "stopped"
