"""The files a run writes beside each other in the loras folder: the LoRA and, with EMA, its averaged twin."""
from __future__ import annotations

import os

from ...trainer.training.ema import AdapterEma
from ...trainer.training.export import export_lora, save_lora
from ...trainer.training.trainable_lora import LoraAdapterSet

EMA_SUFFIX = "-ema"  # <name>-ema.safetensors beside <name>.safetensors (and beside each step checkpoint)


def ema_file_name(lora_file: str) -> str:
    """The EMA weights' file beside a LoRA file: run.safetensors -> run-ema.safetensors."""
    stem, ext = os.path.splitext(lora_file)
    return stem + EMA_SUFFIX + ext


def save_lora_files(path: str, adapters: LoraAdapterSet, name_map: dict[str, str], metadata: dict[str, str],
                    ema: AdapterEma | None) -> None:
    """The LoRA at `path` ("loralab.weights" trained) and, with an EMA, the same keys and metadata with the
    averaged weights beside it ("loralab.weights" ema)."""
    save_lora(path, export_lora(adapters, name_map), {**metadata, "loralab.weights": "trained"})
    if ema is not None:
        with ema.applied(adapters):
            save_lora(ema_file_name(path), export_lora(adapters, name_map), {**metadata, "loralab.weights": "ema"})


def delete_lora_files(folder: str, name: str) -> None:
    """A LoRA file of the run and its EMA twin, if it has one."""
    os.remove(os.path.join(folder, name))
    if os.path.exists(os.path.join(folder, ema_file_name(name))):
        os.remove(os.path.join(folder, ema_file_name(name)))
