"""Starts a real, unmodified ComfyUI on 127.0.0.1 with LoRA Lab linked in, and drives it over HTTP.

Used by the end-to-end tests, the benchmarks and the demo. The host gets its own base directory
(models/, custom_nodes/, input/, output/, temp/, user/) so a run never touches another's files.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "ComfyUI-LoRA-Lab"
DEFAULT_COMFY_DIR = Path(os.environ.get("LORALAB_HOST_DIR", REPO / ".host" / "ComfyUI"))
# Arguments added to every host started here, e.g. another frontend checked by hand:
# LORALAB_HOST_ARGS="--front-end-root /tmp/fe/comfyui_frontend_package/static"
HOST_ARGS = tuple(shlex.split(os.environ.get("LORALAB_HOST_ARGS", "")))
TINY_CHECKPOINT_NAME = "loralab-tiny-sd15.safetensors"
TINY_CHECKPOINT = REPO / ".host" / "cache" / TINY_CHECKPOINT_NAME
FULL_CHECKPOINT_NAME = "loralab-full-sd15.safetensors"  # random weights, the real SD1.5 UNet (benchmarks only)
FULL_CHECKPOINT = TINY_CHECKPOINT.with_name(FULL_CHECKPOINT_NAME)


class HostError(RuntimeError):
    """The host did not start, or a prompt did not finish as expected."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_tiny_checkpoint(comfy_dir: Path = DEFAULT_COMFY_DIR, path: Path = TINY_CHECKPOINT,
                           full_size: bool = False) -> Path:
    """Builds the random SD1.5-architecture checkpoint once and caches it (`full_size`: the real SD1.5 UNet,
    at FULL_CHECKPOINT by default)."""
    if full_size and path == TINY_CHECKPOINT:
        path = FULL_CHECKPOINT
    if not path.exists():
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_checkpoint.py"),
                        "--comfy-dir", str(comfy_dir), "--out", str(path), *(["--full-size"] if full_size else [])],
                       check=True, cwd=comfy_dir)
    return path


# A checkpoint's parts as the host's separate loaders take them: the checkpoint's key prefix, the file's own key
# prefix, the models folder. UNETLoader (Load Diffusion Model), CLIPLoader (type stable_diffusion), VAELoader.
CHECKPOINT_PARTS = {"unet": ("model.diffusion_model.", "", "diffusion_models"),
                    "clip": ("cond_stage_model.transformer.", "text_model.", "text_encoders"),
                    "vae": ("first_stage_model.", "", "vae")}


def ensure_checkpoint_part(part: str, checkpoint: Path = TINY_CHECKPOINT) -> Path:
    """One part of the checkpoint (CHECKPOINT_PARTS) as a file of its own, keyed as the host's loader of that part
    reads it; written once beside the checkpoint (`<its name>-<part>.safetensors`)."""
    old_prefix, new_prefix, _ = CHECKPOINT_PARTS[part]
    path = checkpoint.with_name(f"{checkpoint.stem}-{part}.safetensors")
    if not path.exists():
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(checkpoint), framework="pt") as f:
            tensors = {new_prefix + k[len(old_prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(old_prefix)}
        tmp = path.with_suffix(".partial")
        save_file(tensors, str(tmp))
        tmp.replace(path)
    return path


def add_checkpoint_part(base: Path, part: str, checkpoint: Path = TINY_CHECKPOINT) -> str:
    """The checkpoint's `part` linked into the base directory's models folder for it; its name for the loader."""
    model = ensure_checkpoint_part(part, checkpoint)
    folder = base / "models" / CHECKPOINT_PARTS[part][2]
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / model.name
    if not link.exists():
        link.symlink_to(model)
    return model.name


def prepare_base_dir(base: Path, checkpoint: Path) -> Path:
    """A fresh host base directory: the checkpoint linked in, empty loras/, the pack in custom_nodes/."""
    for sub in ("models/checkpoints", "models/loras", "custom_nodes", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "models" / "checkpoints" / checkpoint.name
    if not link.exists():
        link.symlink_to(checkpoint)
    pack = base / "custom_nodes" / PACK_NAME
    if not pack.exists():
        pack.symlink_to(REPO, target_is_directory=True)
    return base


@dataclass
class ComfyHost:
    base_dir: Path
    comfy_dir: Path = DEFAULT_COMFY_DIR
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def loras_dir(self) -> Path:
        return self.base_dir / "models" / "loras"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    def start(self, timeout: float = 180.0) -> ComfyHost:
        self.log_path = self.base_dir / "host.log"
        log_file = open(self.log_path, "w")
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base_dir), "--disable-auto-launch",
               "--database-url", "sqlite:///:memory:", "--preview-method", "none", *HOST_ARGS, *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise HostError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_text()[-4000:]}")
            try:
                self.get_json("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        else:
            self.stop()
            raise HostError(f"ComfyUI did not answer within {timeout:.0f}s:\n{self.log_text()[-4000:]}")
        try:
            self.assert_pack_imported()
        except HostError:
            self.stop()
            raise
        return self

    def assert_pack_imported(self) -> None:
        text = self.log_text()
        failed = [line for line in text.splitlines()
                  if ("IMPORT FAILED" in line or "Cannot import" in line) and PACK_NAME in line]
        if failed:
            raise HostError("LoRA Lab failed to import in the host:\n" + "\n".join(failed) + "\n" + text[-4000:])
        info = self.get_json("/object_info/LoraLabLoadLora")
        if "LoraLabLoadLora" not in info:
            raise HostError("LoRA Lab's nodes are missing from /object_info:\n" + text[-4000:])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    # --- HTTP -------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[int, bytes, dict[str, str]]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def get_json(self, path: str) -> dict:
        status, body, _ = self.request("GET", path)
        if status != 200:
            raise HostError(f"GET {path} -> {status}: {body[:500]!r}")
        return json.loads(body)

    def post_json(self, path: str, payload: object) -> tuple[int, object]:
        status, body, _ = self.request("POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        try:
            return status, json.loads(body) if body else None
        except json.JSONDecodeError:
            return status, body.decode(errors="replace")

    # --- prompts ----------------------------------------------------------------------------------
    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        status, answer = self.post_json("/prompt", {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex})
        if status != 200:
            raise HostError(f"prompt refused ({status}): {json.dumps(answer)[:3000]}")
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
                return entry
            time.sleep(0.2)
        raise HostError(f"prompt {prompt_id} did not finish in {timeout:.0f}s")

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        """Queues a prompt and returns its history entry; raises unless it succeeded."""
        entry = self.wait(self.queue(prompt), timeout)
        if entry["status"].get("status_str") != "success":
            raise HostError(f"prompt failed: {error_message(entry)}")
        return entry

    def view(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        status, body, _ = self.request("GET", f"/view?{query}")
        if status != 200:
            raise HostError(f"/view {query} -> {status}")
        return body


def error_message(entry: dict) -> str:
    """The host's error message of a failed prompt's history entry, or '' if none."""
    for event, data in entry.get("status", {}).get("messages", []):
        if event == "execution_error":
            return f"{data.get('node_type')}: {data.get('exception_message')}"
    return ""
