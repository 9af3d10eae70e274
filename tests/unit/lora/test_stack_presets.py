"""Stack presets (trainer/lora/stack_presets.py) and the atomic JSON writer under them (trainer/json_io.py)."""

from __future__ import annotations

import json
import math
import os
import re
import threading
from pathlib import Path

import pytest

import trainer.json_io as json_io
from trainer.errors import LoraWriteError, StackPresetError, StackPresetFileError
from trainer.json_io import write_json_atomic
from trainer.lora.stack_presets import FILE_NAME, MAX_NAME, MAX_PRESETS, MAX_ROWS, StackPresetStore, check_name

ROWS = [{"lora": "style.safetensors", "on": True, "strength_model": 0.8, "strength_clip": 0.5},
        {"lora": "sub/face.safetensors", "on": False, "strength_model": 1.0, "strength_clip": 1.0,
         "block_weights": "INS"}]


# --- the atomic writer ---------------------------------------------------------------------------------
def test_json_round_trips_and_leaves_no_temp_file(tmp_path: Path) -> None:
    data = {"a": [1, 2.5, "ünï 漢字"], "b": None}
    write_json_atomic(tmp_path / "x.json", data)
    assert json.loads((tmp_path / "x.json").read_text(encoding="utf-8")) == data
    assert os.listdir(tmp_path) == ["x.json"]


@pytest.mark.parametrize("bad", [{"x": math.nan}, {"x": object()}])
def test_data_that_is_not_json_changes_nothing(tmp_path: Path, bad: object) -> None:
    (tmp_path / "x.json").write_text('{"old": 1}')
    with pytest.raises(LoraWriteError, match="not JSON"):
        write_json_atomic(tmp_path / "x.json", bad)
    assert (tmp_path / "x.json").read_text() == '{"old": 1}' and os.listdir(tmp_path) == ["x.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "x.json").write_text('{"old": 1}')

    def full_disk(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json_io.os, "replace", full_disk)
    with pytest.raises(LoraWriteError,
                       match="disk is full .No space left.*previous file at that path is unchanged") as info:
        write_json_atomic(tmp_path / "x.json", {"new": 2})
    assert info.value.path == str(tmp_path / "x.json")
    assert (tmp_path / "x.json").read_text() == '{"old": 1}' and os.listdir(tmp_path) == ["x.json"]


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(LoraWriteError, match="does not exist"):
        write_json_atomic(tmp_path / "nope" / "x.json", {})


# --- names ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["portrait", "Portrait 2", "a_b.c+d-e", "x" * MAX_NAME, "Ünï 漢字", "1"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name, mentions", [
    ("", "1 to 64"), ("x" * (MAX_NAME + 1), "65 characters"), ("..", "starts with '.'"),
    ("../etc/passwd", "starts with '.'"), ("a/b", "'/' cannot"), ("a\\b", "cannot be used"),
    (" lead", "starts with ' '"), ("trail ", "end with a space"), ("a\x00b", "cannot be used"),
    ("a\nb", "cannot be used"), ("a:b", "':' cannot"), (None, "1 to 64"), (7, "1 to 64")])
def test_bad_names_say_why(name: object, mentions: str) -> None:
    with pytest.raises(StackPresetError, match="preset name") as info:
        check_name(name)
    assert mentions in str(info.value)


def test_names_are_one_unicode_form() -> None:
    assert check_name("Cafe\u0301") == "Caf\u00e9"


# --- the store ------------------------------------------------------------------------------------------
def test_save_list_get_delete_round_trip(tmp_path: Path) -> None:
    store = StackPresetStore(tmp_path / "loralab")
    assert store.list() == [] and not (tmp_path / "loralab").exists(), "listing creates nothing"
    assert store.save("b set", ROWS) is True
    assert store.save("A set", ROWS[:1]) is True
    assert store.save("b set", ROWS[1:]) is False, "saving again replaces"
    assert store.list() == [{"name": "A set", "rows": ROWS[:1]}, {"name": "b set", "rows": ROWS[1:]}]
    assert StackPresetStore(tmp_path / "loralab").get("b set") == ROWS[1:], "a new store reads the same file"
    assert store.delete("A set") is True and store.delete("A set") is False
    assert [p["name"] for p in store.list()] == ["b set"]
    saved = json.loads((tmp_path / "loralab" / FILE_NAME).read_text(encoding="utf-8"))
    assert saved == {"version": 1, "presets": {"b set": ROWS[1:]}}
    assert os.listdir(tmp_path / "loralab") == [FILE_NAME]


def test_rows_are_stored_in_the_nodes_written_form(tmp_path: Path) -> None:
    store = StackPresetStore(tmp_path)
    store.save("short", [{"lora": "a.safetensors", "strength": 0.5}, {"lora": "b.safetensors", "block_weights": ""}])
    assert store.get("short") == [
        {"lora": "a.safetensors", "on": True, "strength_model": 0.5, "strength_clip": 0.5},
        {"lora": "b.safetensors", "on": True, "strength_model": 1.0, "strength_clip": 1.0}]
    store.save("empty", [])
    assert store.get("empty") == []


@pytest.mark.parametrize("rows, mentions", [
    ({"lora": "a"}, "JSON list"), ("[]", "JSON list"), ([1], "must be an object"),
    ([{"lora": ""}], "'lora' must name a file"), ([{"lora": "a", "x": 1}], "unknown field"),
    ([{"lora": "a", "strength_model": "1"}], "finite number"), ([{"lora": "a", "strength_model": math.inf}], "finite"),
    ([{"lora": "a", "block_weights": "NOPE"}], "row 1"), ([{"lora": "a"}] * (MAX_ROWS + 1), f"at most {MAX_ROWS}")])
def test_bad_rows_are_refused_and_nothing_is_written(tmp_path: Path, rows: object, mentions: str) -> None:
    store = StackPresetStore(tmp_path)
    with pytest.raises(StackPresetError, match=mentions):
        store.save("x", rows)
    assert os.listdir(tmp_path) == []


def test_a_bad_name_never_reaches_the_file(tmp_path: Path) -> None:
    store = StackPresetStore(tmp_path / "loralab")
    for name in ("../outside", "..", "a/b"):
        with pytest.raises(StackPresetError):
            store.save(name, ROWS)
        with pytest.raises(StackPresetError):
            store.delete(name)
    assert list(tmp_path.iterdir()) == []


def test_the_number_of_presets_is_capped(tmp_path: Path) -> None:
    store = StackPresetStore(tmp_path)
    store._write({f"p{i}": [] for i in range(MAX_PRESETS)})
    with pytest.raises(StackPresetError, match="delete one first"):
        store.save("one more", [])
    assert store.save("p0", ROWS) is False, "replacing one is still allowed"


@pytest.mark.parametrize("text, mentions", [
    ("{", "not JSON"), ("[]", '"version": 1'), ('{"version": 2, "presets": {}}', '"version": 1'),
    ('{"version": 1, "presets": {"../x": []}}', "preset '../x'"),
    ('{"version": 1, "presets": {"x": [{"lora": 3}]}}', "preset 'x'")])
def test_a_damaged_file_is_reported_and_never_overwritten(tmp_path: Path, text: str, mentions: str) -> None:
    (tmp_path / FILE_NAME).write_text(text)
    store = StackPresetStore(tmp_path)
    for attempt in (store.list, lambda: store.save("x", ROWS), lambda: store.delete("x")):
        with pytest.raises(StackPresetFileError, match="left as it is") as info:
            attempt()
        assert mentions in str(info.value) and info.value.path == str(tmp_path / FILE_NAME)
    assert (tmp_path / FILE_NAME).read_text() == text


def test_concurrent_saves_keep_every_preset(tmp_path: Path) -> None:
    store = StackPresetStore(tmp_path)
    threads = [threading.Thread(target=store.save, args=(f"p{i}", ROWS)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p["name"] for p in store.list()) == sorted(f"p{i}" for i in range(20))


def test_the_editors_name_rule_has_the_same_limit() -> None:
    js = (Path(__file__).resolve().parents[3] / "js" / "lib" / "stack_presets.js").read_text()
    assert re.search(r"export const MAX_NAME = (\d+);", js).group(1) == str(MAX_NAME)
    assert 'new Set([" ", "_", ".", "+", "-"])' in js, "the punctuation the backend allows: ' _.+-'"
