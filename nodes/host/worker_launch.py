"""How the editor starts a Train LoRA node's torchrun workers: the graph they run, their command line (LoRA Lab's
own command line, cli/main.py, under torchrun), the host's folders and settings, and the GPUs they get."""
from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfy.cli_args
import comfy.model_management
import folder_paths
import torch

from ...cli.workflow import nodes_needed
from ...trainer.errors import ConfigError
from ...trainer.training.workers import WorkerRequest, cuda_worker_devices

PACK_DIR = Path(__file__).resolve().parents[2]  # `python <pack dir> train ...` runs cli/main.py
OPTIONS_INPUT, WORKERS_INPUT = "options", "workers"
# The host's own options that change what a run computes, passed on as the host was started with them.
HOST_FLAGS = ("--cpu", "--deterministic", "--disable-api-nodes", "--force-fp32", "--force-fp16", "--fp32-unet",
              "--fp64-unet", "--bf16-unet", "--fp16-unet", "--fp8_e4m3fn-unet", "--fp8_e5m2-unet",
              "--fp8_e8m0fnu-unet", "--fp16-vae", "--fp32-vae", "--bf16-vae", "--cpu-vae", "--fp8_e4m3fn-text-enc",
              "--fp8_e5m2-text-enc", "--fp16-text-enc", "--fp32-text-enc", "--bf16-text-enc",
              "--force-channels-last", "--use-split-cross-attention", "--use-quad-cross-attention",
              "--use-pytorch-cross-attention", "--use-sage-attention", "--use-flash-attention", "--disable-xformers",
              "--force-upcast-attention", "--dont-upcast-attention")
HOST_FOLDERS = ("--base-directory", "--output-directory", "--input-directory", "--user-directory", "--temp-directory")


@dataclass(frozen=True)
class WorkerPlacement:
    """Where the worker processes train: `count` gloo processes on the CPU, or one per listed GPU."""
    count: int
    cuda_devices: tuple[str, ...] | None = None  # CUDA_VISIBLE_DEVICES entries; None: on the CPU

    def describe(self) -> str:
        where = f"GPUs {','.join(self.cuda_devices)}" if self.cuda_devices else "the CPU"
        return f"{self.count} worker process{'es' if self.count != 1 else ''} on {where}"


def placement(request: WorkerRequest) -> WorkerPlacement:
    """The workers' devices: the GPUs after the host's own (or those named), or the CPU on a CPU-only host."""
    device = comfy.model_management.get_torch_device()
    if device.type == "cpu":
        if request.devices is not None:
            raise ConfigError(f"workers names {', '.join(f'cuda:{d}' for d in request.devices)}, but this host "
                              "trains on the CPU; give a number of processes (e.g. 2) instead")
        return WorkerPlacement(request.count)
    if device.type != "cuda":
        raise ConfigError(f"workers: the host trains on {device.type}; worker processes run on CUDA GPUs or the CPU")
    if comfy.cli_args.args.cuda_device is not None:
        raise ConfigError(f"workers: the host was started with --cuda-device {comfy.cli_args.args.cuda_device}, "
                          "which hides every other GPU from it and from the processes it starts; start it without "
                          "--cuda-device (CUDA_VISIBLE_DEVICES may list its GPU first and the workers' after it)")
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [d.strip() for d in listed.split(",") if d.strip()] if listed is not None else \
        [str(i) for i in range(torch.cuda.device_count())]
    return WorkerPlacement(request.count, cuda_worker_devices(request, device.index or 0, visible))


def worker_prompt(prompt: Mapping[str, Any], node_id: str) -> dict[str, Any]:
    """The API graph of just this Train LoRA node and the nodes it needs, its options' `workers` cleared: the
    workers train in their own processes."""
    needed = nodes_needed(prompt, node_id)
    options = needed[node_id]["inputs"].get(OPTIONS_INPUT)
    if isinstance(options, list) and len(options) == 2 and str(options[0]) in needed:
        inputs = needed[str(options[0])]["inputs"]
        if WORKERS_INPUT in inputs:
            inputs[WORKERS_INPUT] = ""
    return needed


def host_arguments(args: Any) -> list[str]:
    """The host's folders and computing options (from its parsed arguments), for the workers' ComfyUI."""
    argv = ["--comfy", str(Path(folder_paths.__file__).resolve().parent)]
    for flag in HOST_FOLDERS:
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value:
            argv += [flag, os.path.abspath(value)]
    for paths in args.extra_model_paths_config or []:
        argv += ["--extra-model-paths-config", *(os.path.abspath(p) for p in paths)]
    on_cpu = comfy.model_management.get_torch_device().type == "cpu"
    argv += [flag for flag in HOST_FLAGS if getattr(args, flag[2:].replace("-", "_"), False)
             or (flag == "--cpu" and on_cpu)]
    return argv


def free_port() -> int:
    """A port no one listens on now, for the workers' status routes (--serve)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_command(where: WorkerPlacement, prompt_file: Path, port: int, result_file: Path, args: Any) -> list[str]:
    """torchrun (as `python -m torch.distributed.run`, the host's Python) running LoRA Lab's command line.

    No --node: the graph holds one Train LoRA node, and torchrun's own parser would take the option for its
    --node-rank (it matches abbreviations anywhere on the line)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(where.count), "--standalone",
            str(PACK_DIR), "train", str(prompt_file), "--serve", str(port),
            "--result", str(result_file), "--no-progress", "--listen", "127.0.0.1", *host_arguments(args)]


def worker_environment(where: WorkerPlacement) -> dict[str, str]:
    """The host's environment, the workers' GPUs visible to them (each takes its LOCAL_RANK's), no inherited
    torchrun variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    if where.cuda_devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(where.cuda_devices)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // where.count)))
    env["PYTHONUNBUFFERED"] = "1"
    return env
