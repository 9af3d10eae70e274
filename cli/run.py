"""One headless run of a Train LoRA node: the host validates the graph and its executor runs the node and the
nodes it needs, as when the prompt is queued in the editor; errors come back in the graph's terms."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .host import Host
from .progress import TrainingBar
from .workflow import WorkflowError, node_label

log = logging.getLogger(__name__)

# Loader inputs -> the host's model folder, so a missing file is reported with the folder and its files.
MODEL_FOLDERS = {"ckpt_name": "checkpoints", "unet_name": "diffusion_models", "vae_name": "vae",
                 "lora_name": "loras", "clip_name": "text_encoders", "clip_name1": "text_encoders",
                 "clip_name2": "text_encoders", "clip_name3": "text_encoders", "control_net_name": "controlnet",
                 "style_model_name": "style_models", "model_name": "upscale_models"}
EXIT_DONE, EXIT_ERROR, EXIT_STOPPED = 0, 1, 3


@dataclass
class RunOutcome:
    exit_code: int
    message: str
    job: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None  # the node's ui outputs (lora_name, loss_history...) when it returned


def label(prompt: dict, node_id: str) -> str:
    node = prompt[node_id]
    return node_label(node_id, node["class_type"], (node.get("_meta") or {}).get("title"))


def check_node_types(host: Host, prompt: dict) -> None:
    for node_id, node in prompt.items():
        if node["class_type"] not in host.nodes.NODE_CLASS_MAPPINGS:
            raise WorkflowError(f"node {label(prompt, node_id)} has a type this ComfyUI does not know: install the "
                                "custom node pack that provides it into custom_nodes/, or remove the node")


def validate(host: Host, prompt: dict, node_id: str) -> None:
    """The host's own validation of the Train LoRA node and its inputs; raises WorkflowError naming each node."""
    check_node_types(host, prompt)
    ok, error, _outputs, node_errors = asyncio.run(
        host.execution.validate_prompt(uuid.uuid4().hex, prompt, [node_id]))
    if ok:
        return
    lines = [describe_error(host, prompt, failing, e) for failing, info in node_errors.items()
             for e in info["errors"]]
    if not lines:
        lines = [f"{error['message']}: {error['details']}".rstrip(": ")]
    raise WorkflowError("the workflow does not validate:\n  " + "\n  ".join(lines))


def describe_error(host: Host, prompt: dict, node_id: str, error: dict) -> str:
    """One validation error: a missing model file names the loader node, the file, the folder and what it holds."""
    where = label(prompt, node_id)
    extra = error.get("extra_info") or {}
    name = extra.get("input_name")
    if error.get("type") == "value_not_in_list" and name:
        value = extra.get("received_value")
        declared = host.input_types(prompt[node_id]["class_type"]) or {}
        spec = {**declared.get("required", {}), **declared.get("optional", {})}.get(name)
        choices = list(spec[0]) if spec and isinstance(spec[0], (list, tuple)) else []
        listed = ", ".join(map(str, choices)) if choices else "nothing"
        folder = MODEL_FOLDERS.get(name)
        if folder is not None:
            import folder_paths
            paths = ", ".join(folder_paths.get_folder_paths(folder)) if folder in folder_paths.folder_names_and_paths \
                else folder
            return (f"node {where}: the model file {value!r} ({name}) is not in the {folder} folder ({paths}); "
                    f"it has: {listed}")
        return f"node {where}: {name} is {value!r}, which is not one of: {listed}"
    return f"node {where}: {error.get('message')}: {error.get('details')}".rstrip(": ")


@contextlib.contextmanager
def cancel_on_signals(host: Host) -> Iterator[None]:
    """The first Ctrl+C is the editor's Cancel (the run keeps its last whole step); a second one kills.

    SIGTERM (what torchrun sends every process when one fails or torchrun itself is stopped, and what
    `kill` sends) is that Cancel too, however often it comes: torchrun follows it with SIGKILL after its
    grace period, so the save must not be cut short by a second signal.
    """
    signalled: set[int] = set()

    def cancel(signum, frame) -> None:
        if not signalled:
            log.warning("Cancelling (%s): the run stops after saving its last whole step%s",
                        signal.Signals(signum).name, " (Ctrl+C again to kill)" if signum == signal.SIGINT else "")
        signalled.add(signum)
        host.nodes.interrupt_processing(True)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {s: signal.signal(s, cancel) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def execute(host: Host, prompt: dict, node_id: str, extra_data: dict, bar: TrainingBar) -> RunOutcome:
    """Runs the Train LoRA node (and the nodes it needs) through the host's executor."""
    execution = host.execution
    executor = execution.PromptExecutor(host.server, cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})  # 0.33 reads the last
    with cancel_on_signals(host):
        executor.execute(prompt, uuid.uuid4().hex, extra_data, [node_id])
    bar.close()
    job = bar.job
    for event, data in executor.status_messages:
        if event == "execution_error":
            failing = str(data["node_id"])
            return RunOutcome(EXIT_ERROR, f"node {label(prompt, failing)} failed: {data['exception_message']}", job)
        if event == "execution_interrupted":
            kept = (job or {}).get("error") or "the run was cancelled before training started"
            return RunOutcome(EXIT_STOPPED, kept, job)
    outputs = executor.history_result["outputs"].get(node_id, {})
    summary = " ".join(outputs.get("text", [])) or "done"
    if job is not None and job.get("state") == "stopped":
        return RunOutcome(EXIT_STOPPED, summary, job, outputs)
    return RunOutcome(EXIT_DONE, summary, job, outputs)
