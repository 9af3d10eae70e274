"""Tests of safe .safetensors reading (header validation, no pickle) and atomic writing."""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path

import pytest
import torch

import trainer.atomic_file as atomic_file
import trainer.safetensors_io as sio
from scripts.lora_fixtures import write_empty, write_html, write_pickle_pt, write_truncated
from trainer.errors import LoraFileError, LoraWriteError
from trainer.safetensors_io import read_header, read_metadata, read_safetensors, write_safetensors_atomic


def _raw_file(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def test_round_trip_keeps_keys_shapes_values_dtypes_and_metadata(tmp_path: Path) -> None:
    tensors = {
        "a.lora_down.weight": torch.randn(2, 3),
        "a.lora_up.weight": torch.randn(3, 2).to(torch.bfloat16),
        "a.alpha": torch.tensor(4.0),
        "b.conv": torch.randn(2, 3, 3, 3).to(torch.float16),
    }
    metadata = {"ss_network_dim": "2", "modelspec.trigger_phrase": "sks, dog"}
    path = tmp_path / "x.safetensors"
    write_safetensors_atomic(path, tensors, metadata)
    loaded, loaded_meta = read_safetensors(path)
    assert loaded_meta == metadata
    assert loaded.keys() == tensors.keys()
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
        assert torch.equal(loaded[key], value)
    assert read_metadata(path) == metadata


def test_write_accepts_views_non_contiguous_and_shared_tensors(tmp_path: Path) -> None:
    base = torch.randn(4, 6)
    tensors = {"t": base.t(), "v": base[:2], "same": base}
    write_safetensors_atomic(tmp_path / "v.safetensors", tensors, None)
    loaded, metadata = read_safetensors(tmp_path / "v.safetensors")
    assert metadata == {}
    assert torch.equal(loaded["t"], base.t()) and torch.equal(loaded["v"], base[:2])


def test_header_reports_entries_and_data_start(tmp_path: Path) -> None:
    path = tmp_path / "h.safetensors"
    write_safetensors_atomic(path, {"w": torch.zeros(2, 2)}, {"k": "v"})
    header = read_header(path)
    assert header.tensors["w"].shape == (2, 2) and header.tensors["w"].dtype == "F32"
    assert header.metadata == {"k": "v"}
    assert header.data_start + 16 == header.file_size


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".bin", ".pth", ".PT"])
def test_pickle_extensions_refused_without_opening(tmp_path: Path, suffix: str) -> None:
    missing = tmp_path / f"never_created{suffix}"  # does not exist: proves the file is never opened
    with pytest.raises(LoraFileError, match="pickle files can run arbitrary code.*Convert it to .safetensors"):
        read_safetensors(missing)


def test_real_pickle_file_refused(tmp_path: Path) -> None:
    path = write_pickle_pt(tmp_path / "lora.pt")
    with pytest.raises(LoraFileError, match="lora.pt' is a PyTorch pickle file"):
        read_metadata(path)


def test_zip_pickle_renamed_to_safetensors(tmp_path: Path) -> None:
    path = write_pickle_pt(tmp_path / "lora.pt")
    renamed = path.rename(tmp_path / "renamed.safetensors")
    with pytest.raises(LoraFileError, match="is a ZIP archive"):
        read_safetensors(renamed)


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(LoraFileError, match=r"empty\.safetensors' is empty \(0 bytes\)"):
        read_safetensors(write_empty(tmp_path / "empty.safetensors"))


def test_shorter_than_length_field(tmp_path: Path) -> None:
    (tmp_path / "tiny.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(LoraFileError, match="is truncated: only 2 bytes"):
        read_safetensors(tmp_path / "tiny.safetensors")


def test_html_page_named_safetensors(tmp_path: Path) -> None:
    with pytest.raises(LoraFileError, match="is an HTML/XML page.*failed download"):
        read_safetensors(write_html(tmp_path / "page.safetensors"))


def test_git_lfs_pointer(tmp_path: Path) -> None:
    (tmp_path / "lfs.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n")
    with pytest.raises(LoraFileError, match="Git LFS pointer"):
        read_safetensors(tmp_path / "lfs.safetensors")


def test_random_bytes(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    data = bytes(torch.randint(0, 256, (256,), generator=gen, dtype=torch.uint8).tolist())
    (tmp_path / "noise.safetensors").write_bytes(b"\xff\xff\xff\xff" + data)
    with pytest.raises(LoraFileError, match="is not a safetensors file: its first 8 bytes give a header length"):
        read_safetensors(tmp_path / "noise.safetensors")


def test_truncated_download_names_sizes(tmp_path: Path) -> None:
    path = write_truncated(tmp_path / "cut.safetensors")
    with pytest.raises(LoraFileError, match=r"is truncated: the header says \d+ bytes of tensor data .*the file "
                                            r"has \d+.*download it again"):
        read_safetensors(path)


def test_header_length_beyond_file(tmp_path: Path) -> None:
    path = _raw_file(tmp_path / "short.safetensors", {"a": 1}, length=1234)
    with pytest.raises(LoraFileError, match="the header says it is 1234 bytes long, the file has only 8"):
        read_metadata(path)


def test_header_not_json(tmp_path: Path) -> None:
    path = _raw_file(tmp_path / "garbage.safetensors", b"\x01\x02\x03 not json")
    with pytest.raises(LoraFileError, match="its header is not valid JSON"):
        read_metadata(path)


def test_header_not_an_object(tmp_path: Path) -> None:
    with pytest.raises(LoraFileError, match="not a JSON object"):
        read_metadata(_raw_file(tmp_path / "list.safetensors", b"  12345  "))


@pytest.mark.parametrize("entry, message", [
    ({"dtype": "F32", "shape": [2]}, "lacks dtype/shape/data_offsets"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "has shape"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}, "has shape"),
    ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "needs 12 bytes but its offsets span 8"),
])
def test_damaged_header_entries(tmp_path: Path, entry: dict[str, object], message: str) -> None:
    path = _raw_file(tmp_path / "bad.safetensors", {"w": entry}, data=b"\0" * 8)
    with pytest.raises(LoraFileError, match=message):
        read_metadata(path)


def test_metadata_must_be_text(tmp_path: Path) -> None:
    header = {"__metadata__": {"rank": 4}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    with pytest.raises(LoraFileError, match="__metadata__ must map text to text"):
        read_metadata(_raw_file(tmp_path / "meta.safetensors", header, data=b"\0" * 8))


def test_library_decode_errors_are_wrapped(tmp_path: Path) -> None:
    # Offsets that fit the file and the dtype but leave a gap: only the library notices.
    header = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}
    path = _raw_file(tmp_path / "gap.safetensors", header, data=b"\0" * 8)
    with pytest.raises(LoraFileError, match="could not be decoded by safetensors"):
        read_safetensors(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LoraFileError, match="Cannot read .*exists and is readable"):
        read_safetensors(tmp_path / "nope.safetensors")


def _write_old(path: Path) -> dict[str, torch.Tensor]:
    old = {"old": torch.arange(4.0)}
    write_safetensors_atomic(path, old, {"version": "old"})
    return old


def _assert_old_intact(path: Path, old: dict[str, torch.Tensor]) -> None:
    tensors, metadata = read_safetensors(path)
    assert metadata == {"version": "old"} and torch.equal(tensors["old"], old["old"])
    assert sorted(os.listdir(path.parent)) == [path.name], "temp file left behind"


def test_atomic_write_keeps_old_file_when_rename_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lora.safetensors"
    old = _write_old(path)

    def full_disk(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sio.os, "replace", full_disk)
    with pytest.raises(LoraWriteError, match="No space left on device.*previous file at that path is unchanged"):
        write_safetensors_atomic(path, {"new": torch.ones(3)}, {"version": "new"})
    monkeypatch.undo()
    _assert_old_intact(path, old)


def test_atomic_write_keeps_old_file_when_fsync_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lora.safetensors"
    old = _write_old(path)

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sio.os, "fsync", failing_fsync)
    with pytest.raises(LoraWriteError, match="Input/output error"):
        write_safetensors_atomic(path, {"new": torch.ones(3)}, None)
    monkeypatch.undo()
    _assert_old_intact(path, old)


def test_atomic_write_keeps_old_file_when_serialising_fails(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lora.safetensors"
    old = _write_old(path)

    def broken(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> bytes:
        raise RuntimeError("serialiser exploded")

    monkeypatch.setattr(sio, "_serialise", broken)
    with pytest.raises(LoraWriteError, match="serialiser exploded") as info:
        write_safetensors_atomic(path, {"new": torch.ones(3)}, None)
    assert isinstance(info.value.__cause__, RuntimeError)
    monkeypatch.undo()
    _assert_old_intact(path, old)


def test_write_rejects_non_text_metadata_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(LoraWriteError, match="metadata 'rank' is int.*str\\(\\) or json.dumps"):
        write_safetensors_atomic(tmp_path / "m.safetensors", {"w": torch.ones(1)}, {"rank": 4})  # type: ignore
    with pytest.raises(LoraWriteError, match="entry 'w' is list"):
        write_safetensors_atomic(tmp_path / "m.safetensors", {"w": [1.0]}, None)  # type: ignore[dict-item]
    with pytest.raises(LoraWriteError, match="does not exist"):
        write_safetensors_atomic(tmp_path / "no" / "m.safetensors", {"w": torch.ones(1)}, None)
    assert os.listdir(tmp_path) == []


class _FullDiskFile:
    """A real file object whose write stores half the bytes and then fails as a full disk does (ENOSPC)."""

    def __init__(self, real) -> None:
        self._real = real

    def write(self, data: bytes) -> int:
        self._real.write(data[:len(data) // 2])
        self._real.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str):
        return getattr(self._real, name)

    def __enter__(self) -> _FullDiskFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._real.close()


def test_full_disk_during_write_keeps_old_file_byte_identical(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lora.safetensors"
    old = _write_old(path)
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(sio.os, "fdopen", lambda fd, mode: _FullDiskFile(real_fdopen(fd, mode)))
    with pytest.raises(LoraWriteError, match=r"Could not write '.*lora.safetensors': the disk is full "
                                             r"\(No space left on device\)\. The previous file at that path is "
                                             r"unchanged\. Free space on the disk") as info:
        write_safetensors_atomic(path, {"new": torch.ones(1000)}, {"version": "new"})
    monkeypatch.undo()
    assert info.value.path == str(path) and isinstance(info.value.__cause__, OSError)
    assert path.read_bytes() == before
    _assert_old_intact(path, old)


def test_full_disk_on_a_new_file_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fdopen = os.fdopen
    monkeypatch.setattr(sio.os, "fdopen", lambda fd, mode: _FullDiskFile(real_fdopen(fd, mode)))
    with pytest.raises(LoraWriteError, match="disk is full.*No file was created at that path"):
        write_safetensors_atomic(tmp_path / "new.safetensors", {"new": torch.ones(10)}, None)
    assert os.listdir(tmp_path) == []


def test_unwritable_folder_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, where chmod does not stop writes: the refusal is simulated where the OS gives it.
    path = tmp_path / "lora.safetensors"
    old = _write_old(path)
    before = path.read_bytes()

    def refused(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".lora.safetensors.x.tmp"))

    monkeypatch.setattr(atomic_file.tempfile, "mkstemp", refused)
    with pytest.raises(LoraWriteError, match=rf"Could not write '.*lora.safetensors': the folder '{tmp_path}' is "
                                             r"not writable \(Permission denied\)\. The previous file at that "
                                             r"path is unchanged\. Choose a folder you may write to"):
        write_safetensors_atomic(path, {"new": torch.ones(3)}, None)
    monkeypatch.undo()
    assert path.read_bytes() == before
    _assert_old_intact(path, old)


def test_read_only_file_system_is_reported_as_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(src: str, dst: str) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(sio.os, "replace", read_only)
    with pytest.raises(LoraWriteError, match=r"is not writable \(Read-only file system\)"):
        write_safetensors_atomic(tmp_path / "x.safetensors", {"w": torch.ones(1)}, None)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []
