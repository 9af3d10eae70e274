"""Safe reading and atomic writing of .safetensors files, with a validated header and no pickle."""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError

from .atomic_file import write_bytes_atomic, write_failure
from .errors import LoraFileError, LoraWriteError

logger = logging.getLogger(__name__)

PICKLE_EXTENSIONS = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
# The safetensors library refuses headers above 100 MB; a LoRA header is a few hundred KB at most.
MAX_HEADER_BYTES = 100_000_000
METADATA_KEY = "__metadata__"
# Bytes per element of each safetensors dtype (sub-byte and exotic types are left to the library).
DTYPE_BYTES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    """One header entry: the tensor's dtype name, shape and byte range in the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: tensor entries, string metadata, and where the data section starts."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int
    file_size: int


def _fail(path: str | os.PathLike[str], problem: str, fix: str) -> LoraFileError:
    return LoraFileError(f"'{path}' {problem}. {fix}", path=str(path))


def refuse_pickle_extension(path: str | os.PathLike[str]) -> None:
    """Raise for pickle-based formats (.pt/.ckpt/.bin/.pth) without opening the file."""
    suffix = Path(path).suffix.lower()
    if suffix in PICKLE_EXTENSIONS:
        raise _fail(
            path,
            f"is a PyTorch pickle file ({suffix}); pickle files can run arbitrary code when opened, "
            "so LoRA Lab never loads them",
            "Convert it to .safetensors with a trusted tool (in an isolated environment) "
            "or download the .safetensors version, then select that file",
        )


def _describe_foreign_bytes(head: bytes) -> str | None:
    """Name a common non-safetensors file type from its first bytes, or None."""
    stripped = head.lstrip().lower()
    if head.startswith(b"PK\x03\x04"):
        return "is a ZIP archive (a PyTorch .pt/.ckpt pickle or a zip renamed to .safetensors), not a safetensors file"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "is a Python pickle, not a safetensors file"
    if stripped.startswith((b"<!doctype", b"<html", b"<head", b"<?xml", b"<")):
        return "is an HTML/XML page, not a safetensors file (a failed download or a login page saved under this name?)"
    if stripped.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer (a small text stub), not the real file"
    if stripped.startswith((b"{", b"[")):
        return "is a JSON/text file, not a safetensors file"
    return None


def _parse_entry(path: str | os.PathLike[str], key: str, entry: object, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise _fail(path, f"has a damaged header: entry '{key}' lacks dtype/shape/data_offsets",
                    "The file is corrupt; download or export it again")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
        raise _fail(path, f"has a damaged header: entry '{key}' has shape {shape!r} and offsets {offsets!r}",
                    "The file is corrupt; download or export it again")
    begin, end = offsets
    if end > data_size:
        raise _fail(path, f"is truncated: the header says {end} bytes of tensor data (tensor '{key}'), "
                    f"the file has {data_size}", "The download or copy was interrupted; download it again")
    itemsize = DTYPE_BYTES.get(str(dtype))
    if itemsize is not None and end - begin != math.prod(shape) * itemsize:
        raise _fail(path, f"has a damaged header: tensor '{key}' of {dtype} {shape} needs "
                    f"{math.prod(shape) * itemsize} bytes but its offsets span {end - begin}",
                    "The file is corrupt; download or export it again")
    return TensorInfo(dtype=str(dtype), shape=tuple(shape), begin=begin, end=end)


def _parse_metadata(path: str | os.PathLike[str], raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise _fail(path, "has a damaged header: __metadata__ must map text to text",
                    "The file is corrupt or was written by a broken tool; export it again")
    return dict(raw)


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate the header of a .safetensors file; raise LoraFileError in user terms."""
    refuse_pickle_extension(path)
    try:
        file_size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if file_size == 0:
                raise _fail(path, "is empty (0 bytes)", "The download or copy failed; download it again")
            foreign = _describe_foreign_bytes(prefix + f.read(56))
            if len(prefix) < 8:
                raise _fail(path, f"is truncated: only {file_size} bytes, too short for a safetensors header",
                            "Download it again")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or header_len < 2:
                problem = foreign or (f"is not a safetensors file: its first 8 bytes give a header length "
                                      f"of {header_len} bytes, which no safetensors file has")
                raise _fail(path, problem, "Select a .safetensors LoRA file")
            if header_len > file_size - 8:
                raise _fail(path, f"is truncated: the header says it is {header_len} bytes long, "
                            f"the file has only {file_size - 8} bytes after the length field",
                            "The download or copy was interrupted; download it again")
            f.seek(8)
            raw_header = f.read(header_len)
    except OSError as e:
        raise LoraFileError(f"Cannot read '{path}': {e.strerror or e}. Check that the file exists and is "
                            "readable.", path=str(path)) from e
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        problem = foreign or "is not a safetensors file (its header is not valid JSON)"
        raise _fail(path, problem, "Select a .safetensors LoRA file, or download it again") from e
    if not isinstance(header, dict):
        raise _fail(path, "is not a safetensors file (its header is not a JSON object)",
                    "Select a .safetensors LoRA file")
    data_start = 8 + header_len
    data_size = file_size - data_start
    metadata = _parse_metadata(path, header.pop(METADATA_KEY, None))
    tensors = {k: _parse_entry(path, k, v, data_size) for k, v in header.items()}
    return SafetensorsHeader(tensors=tensors, metadata=metadata, data_start=data_start, file_size=file_size)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The file's `__metadata__` (text to text), reading only the header."""
    return read_header(path).metadata


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on CPU) and the metadata of a validated .safetensors file."""
    header = read_header(path)
    try:
        tensors = safetensors.torch.load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise _fail(path, f"could not be decoded by safetensors ({e})",
                    "The file is corrupt or uses an unsupported tensor type; export it again") from e
    missing = header.tensors.keys() - tensors.keys()
    if missing:
        raise _fail(path, f"lost tensors while loading ({sorted(missing)[:3]})", "Export it again")
    return tensors, header.metadata


def _check_for_write(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> None:
    for key, value in tensors.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise LoraWriteError(f"Cannot write '{path}': entry {key!r} is {type(value).__name__}, "
                                 "expected a str key and a torch.Tensor", path=path)
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise LoraWriteError(f"Cannot write '{path}': metadata {key!r} is {type(value).__name__}, "
                                 "safetensors metadata must be text; convert it with str() or json.dumps()",
                                 path=path)


def _cpu_contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # A fresh copy per tensor: safetensors refuses tensors that share storage (views, tied weights).
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def _serialise(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> bytes:
    return safetensors.torch.save(tensors, metadata=metadata)


def write_safetensors_atomic(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
                             metadata: dict[str, str] | None = None) -> None:
    """Write tensors and metadata to `path` via a temp file, fsync and rename; all or nothing.

    On any failure (full disk, unwritable folder, I/O error) raises LoraWriteError naming the file; the
    previous file at `path`, if any, is byte-identical to before and no temp file is left behind.
    """
    path = os.fspath(path)
    _check_for_write(path, tensors, metadata)
    try:
        data = _serialise(_cpu_contiguous(tensors), metadata)
    except (SafetensorError, RuntimeError, ValueError) as e:
        raise write_failure(path, os.path.dirname(os.path.abspath(path)), e) from e
    write_bytes_atomic(path, data)
    logger.debug("wrote %s (%d tensors)", path, len(tensors))


