"""Where a training run's files go in the host's loras folder: final LoRA, step checkpoints, resume state."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import folder_paths

from ...trainer.errors import RunNameError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,99}$")
RESUME_SUFFIX = ".loralab-resume"  # not a LoRA extension: never listed in LoRA dropdowns


@dataclass(frozen=True)
class RunFiles:
    folder: str
    name: str

    @classmethod
    def for_name(cls, name: str) -> RunFiles:
        name = name.strip().removesuffix(".safetensors")
        if "/" in name or "\\" in name or ".." in name:
            raise RunNameError(f"output name {name!r} must be a plain file name: no folders, '/', '\\' or '..'")
        if not NAME_PATTERN.match(name):
            raise RunNameError(f"output name {name!r} may use letters, digits, spaces and _ . + - "
                               "(1-100 characters, starting with a letter or digit)")
        return cls(folder_paths.get_folder_paths("loras")[0], name)

    @property
    def lora_name(self) -> str:
        return f"{self.name}.safetensors"

    @property
    def lora_path(self) -> str:
        return os.path.join(self.folder, self.lora_name)

    def checkpoint_name(self, step: int) -> str:
        return f"{self.name}-step{step}.safetensors"

    def checkpoint_path(self, step: int) -> str:
        return os.path.join(self.folder, self.checkpoint_name(step))

    @property
    def resume_path(self) -> str:
        return os.path.join(self.folder, self.name + RESUME_SUFFIX)
