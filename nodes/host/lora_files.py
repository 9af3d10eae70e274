"""The host's loras folders: safe name resolution and a parsed-file cache keyed by path, size and mtime."""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import PurePosixPath, PureWindowsPath

import folder_paths

from ...trainer.errors import LoraNameError
from ...trainer.lora.file import LoraFile, parse_lora
from ...trainer.safetensors_io import read_safetensors

log = logging.getLogger(__name__)

CACHE_MAX_FILES = 16


def check_lora_name(name: str) -> str | None:
    """Why `name` cannot be a LoRA in the loras folders, or None if its form is acceptable."""
    if not isinstance(name, str) or not name.strip():
        return "no LoRA file was chosen"
    if "\x00" in name:
        return f"LoRA name {name!r} contains a NUL character"
    if os.path.isabs(name) or PureWindowsPath(name).drive or name.startswith(("/", "\\")):
        return f"LoRA name {name!r} is an absolute path; choose a file inside the loras folders"
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        return f"LoRA name {name!r} points outside the loras folders ('..' is not allowed)"
    return None


def resolve_lora_path(name: str) -> str:
    """The full path of a LoRA file in one of the host's loras folders, or a clear LoraNameError."""
    problem = check_lora_name(name)
    if problem:
        raise LoraNameError(problem, path=name)
    for folder in folder_paths.get_folder_paths("loras"):
        candidate = os.path.normpath(os.path.join(folder, name))
        if os.path.commonpath([os.path.abspath(folder), os.path.abspath(candidate)]) != os.path.abspath(folder):
            continue
        if os.path.isfile(candidate):
            return candidate
    folders = ", ".join(folder_paths.get_folder_paths("loras"))
    raise LoraNameError(f"LoRA file {name!r} was not found in the loras folders ({folders})", path=name)


class ParsedLoraCache:
    """Parsed LoRA files, re-read only when the file's size or modification time changes."""

    def __init__(self, max_files: int = CACHE_MAX_FILES) -> None:
        self._entries: OrderedDict[str, tuple[int, int, LoraFile]] = OrderedDict()
        self._max_files = max_files
        self._lock = threading.Lock()

    def get(self, name: str) -> LoraFile:
        path = resolve_lora_path(name)
        stat = os.stat(path)
        with self._lock:
            entry = self._entries.get(path)
            if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
                self._entries.move_to_end(path)
                log.info("LoRA Lab: %s unchanged, using the parsed copy", name)
                return entry[2]
        tensors, metadata = read_safetensors(path)
        lora = parse_lora(tensors, metadata, source_name=name)
        log.info("LoRA Lab: read %s (%d layers)", name, len(lora.modules))
        with self._lock:
            self._entries[path] = (stat.st_size, stat.st_mtime_ns, lora)
            self._entries.move_to_end(path)
            while len(self._entries) > self._max_files:
                self._entries.popitem(last=False)
        return lora


parsed_loras = ParsedLoraCache()


def lora_names() -> list[str]:
    """Every file in the loras folders, as the host's own LoRA loader lists them."""
    return folder_paths.get_filename_list("loras")
