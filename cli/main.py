"""`python <pack folder> train workflow.json`: a run designed in the graph editor, run without the editor.

    train    runs the workflow's Train LoRA node (and the nodes it needs) in ComfyUI imported as a library;
             under torchrun (torchrun --nproc_per_node N <pack folder> train ...) data-parallel over N processes
    convert  writes the API graph the editor would queue for a UI-format workflow

Options this parser does not know are ComfyUI's own (--cpu, --base-directory, --extra-model-paths-config,
--lowvram, --listen...) and are parsed by ComfyUI's parser, with the same meaning as for main.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .host import HostSetupError, find_comfy_dir, start_host
from .processes import Processes, leave_process_group, request_process_group
from .workflow import (
    WorkflowError,
    is_api_format,
    is_ui_format,
    runnable_nodes,
    set_input,
    train_lora_node,
    ui_to_api,
)

if TYPE_CHECKING:
    from .run import RunOutcome

log = logging.getLogger(__name__)
PACK_DIR = Path(__file__).resolve().parents[1]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python ComfyUI-LoRA-Lab", description=__doc__.split("\n\n")[0],
                                  epilog="Any other option is passed to ComfyUI's own parser "
                                         "(e.g. --cpu, --base-directory DIR, --extra-model-paths-config FILE).")
    commands = top.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "run the workflow's Train LoRA node"),
                            ("convert", "print the API graph the editor would queue for this workflow")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("workflow", type=Path, help="a workflow .json saved by the editor (UI or API format)")
        sub.add_argument("--comfy", metavar="DIR",
                         help="the ComfyUI folder (default: $COMFYUI_DIR, or the ComfyUI whose custom_nodes/ "
                              "holds this pack)")
        sub.add_argument("--set", action="append", default=[], metavar="ID.INPUT=VALUE",
                         help="change one input before running, e.g. --set 3.resume=true --set 4.steps=200 "
                              "(VALUE is read as JSON when it parses, else as text)")
    train, convert = commands.choices["train"], commands.choices["convert"]
    train.add_argument("--node", metavar="ID", help="the Train LoRA node to run when the workflow has several")
    train.add_argument("--serve", type=int, metavar="PORT",
                       help="serve LoRA Lab's status routes (/loralab/jobs...) on this port while the run lasts, "
                            "at ComfyUI's --listen address (default 127.0.0.1)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    train.add_argument("--result", type=Path, metavar="FILE",
                       help="write the outcome as JSON here at the end (exit code, message, the job's last "
                            "snapshot, the node's outputs): how the editor's Train LoRA reads back its workers' run")
    convert.add_argument("-o", "--output", type=Path, help="write the API graph here (default: standard output)")
    return top


def read_workflow(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise WorkflowError(f"cannot read the workflow {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise WorkflowError(f"{path} is not JSON ({e}); save the workflow from the editor (Save or "
                            "Export (API))") from e
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and is_api_format(data["prompt"]):
        data = data["prompt"]  # a /prompt request body
    if not isinstance(data, dict) or not (is_ui_format(data) or is_api_format(data)):
        raise WorkflowError(f"{path} is neither a workflow saved by the editor (with 'nodes' and 'links') nor an "
                            "API-format graph (node id -> {class_type, inputs})")
    return data


def main(argv: list[str] | None = None) -> int:
    args, host_argv = parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        workflow = read_workflow(args.workflow)
        if args.command == "train":  # no or several Train LoRA nodes: refused before the host loads
            train_lora_node(runnable_nodes(workflow), args.node)
        processes = Processes.from_env(os.environ)  # torchrun: this process's place among them
        if processes.several:  # Train LoRA joins the process group only when the command line asks it to
            request_process_group(os.environ, os.getpid())
        if not processes.is_main:  # the main process reports; the others only say what fails
            logging.getLogger().setLevel(logging.ERROR)
        comfy_dir = find_comfy_dir(args.comfy, PACK_DIR)
        host = start_host(comfy_dir, host_argv, PACK_DIR, processes)
        logging.getLogger().setLevel(host.console_log_level() if processes.is_main else logging.ERROR)
        ui = is_ui_format(workflow)
        prompt = ui_to_api(workflow, host.input_types, host.display_names) if ui else workflow
        for assignment in args.set:
            set_input(prompt, assignment)
        if args.command == "convert":
            text = json.dumps(prompt, indent=2)
            if args.output:
                args.output.write_text(text + "\n", encoding="utf-8")
            else:
                print(text)
            return 0
        return train(host, prompt, args, {"extra_pnginfo": {"workflow": workflow}} if ui else {}, processes)
    except (WorkflowError, HostSetupError) as e:
        log.error("error: %s", e)
        return 1


def train(host, prompt: dict, args: argparse.Namespace, extra_data: dict, processes: Processes) -> int:
    """Runs the Train LoRA node; under torchrun every process does, and only the main one shows and serves it."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .progress import TrainingBar
    from .run import EXIT_ERROR, execute, validate
    from .serve import StatusServer

    node_id = train_lora_node(prompt, args.node)
    validate(host, prompt, node_id)
    bar = TrainingBar(node_id, enabled=not args.no_progress and processes.is_main)
    host.server.listener = bar.on_event
    status = None
    if args.serve is not None and processes.is_main:
        addresses = [a for a in (host.args.listen or "127.0.0.1").split(",") if a]
        status = StatusServer(host.server.routes, addresses, args.serve).start()
    try:
        with logging_redirect_tqdm():
            outcome = execute(host, prompt, node_id, extra_data, bar)
    finally:
        if status is not None:
            status.stop()
        leave_process_group()
    if processes.is_main:
        (log.info if outcome.exit_code == 0 else log.error)("%s", outcome.message)
    elif outcome.exit_code == EXIT_ERROR:  # its own failure; a stop the main process reports for every process
        log.error("%s: %s", processes.label(), outcome.message)
    if args.result is not None and (processes.is_main or outcome.exit_code == EXIT_ERROR):
        write_result(processes.result_file(args.result), outcome)
    return outcome.exit_code


def write_result(path: Path, outcome: RunOutcome) -> None:
    """The run's outcome as JSON, written whole (a reader never sees half a file)."""
    data = {"exit_code": outcome.exit_code, "message": outcome.message, "job": outcome.job,
            "outputs": outcome.outputs}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data), encoding="utf-8")
    partial.replace(path)
