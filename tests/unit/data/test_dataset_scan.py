"""Dataset folders to DatasetSpec: layout, captions, trigger word, error messages, split, summary, fingerprint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from trainer.data.images import load_pixels
from trainer.data.scan import fingerprint, scan_dataset
from trainer.errors import DatasetError


def _image(path: Path, size: tuple[int, int] = (32, 32), caption: str | None = "a photo") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 140, 200)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def test_missing_empty_and_file_folders_say_what_to_put_there(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"'.*nowhere' does not exist; create the folder and put "
                                           r"\.png/\.jpg/\.webp images with same-name \.txt captions"):
        scan_dataset(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        scan_dataset(tmp_path / "notes.txt")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.md").write_text("no images here")
    with pytest.raises(DatasetError, match=r"no images found in dataset folder '.*empty' or its sub-folders; "
                                           r"put \.png/\.jpg/\.webp images"):
        scan_dataset(empty)


def test_bad_settings_are_rejected(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    with pytest.raises(DatasetError, match="resolution = 500 is not allowed; expected a multiple of 64"):
        scan_dataset(tmp_path, resolution=500)
    with pytest.raises(DatasetError, match=r"validation_share = 0.6 is not allowed; expected a number from 0"):
        scan_dataset(tmp_path, validation_share=0.6)
    with pytest.raises(DatasetError, match="flip = 'yes' is not allowed"):
        scan_dataset(tmp_path, flip="yes")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="seed = -1 is not allowed"):
        scan_dataset(tmp_path, seed=-1)


def test_corrupt_and_tiny_images_are_named_not_skipped(tmp_path: Path) -> None:
    _image(tmp_path / "good.png")
    (tmp_path / "5_cat").mkdir()
    (tmp_path / "5_cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DatasetError, match=r"'5_cat/broken.jpg' is not a readable image.*remove it"):
        scan_dataset(tmp_path, resolution=64)
    (tmp_path / "5_cat" / "broken.jpg").unlink()
    _image(tmp_path / "dot.png", size=(1, 1))
    with pytest.raises(DatasetError, match=r"'dot.png' is 1x1 px, too small to train on"):
        scan_dataset(tmp_path, resolution=64)


def test_missing_caption_uses_the_trigger_word_and_warns(tmp_path: Path) -> None:
    _image(tmp_path / "captioned.png", caption="a red car")
    _image(tmp_path / "bare.png", caption=None)
    _image(tmp_path / "blank.png", caption="  \n")
    spec = scan_dataset(tmp_path, trigger_word="ohwx", resolution=64)
    captions = {item.relative_path: item.caption for item in spec.items}
    assert captions == {"bare.png": "ohwx", "blank.png": "ohwx", "captioned.png": "ohwx, a red car"}
    assert [item.caption_missing for item in spec.items] == [True, True, False]
    assert len(spec.warnings) == 2 and "'bare.png' has no caption" in spec.warnings[0]
    assert "2 missing captions" in spec.summary()


def test_missing_caption_without_trigger_word_names_the_image(tmp_path: Path) -> None:
    _image(tmp_path / "captioned.png")
    _image(tmp_path / "3_dog" / "bare.webp", caption=None)
    with pytest.raises(DatasetError, match=r"'3_dog/bare.webp' has no caption .* no trigger word is set; "
                                           r"add the caption file\(s\), or set a trigger word"):
        scan_dataset(tmp_path, resolution=64)


def test_trigger_word_is_prepended_once(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", caption="a cat on a mat")
    _image(tmp_path / "b.png", caption="photo of OHWX cat")
    _image(tmp_path / "c.png", caption="ohwx, sitting")
    spec = scan_dataset(tmp_path, trigger_word=" ohwx ", resolution=64)
    assert [item.caption for item in spec.items] == ["ohwx, a cat on a mat", "photo of OHWX cat", "ohwx, sitting"]
    assert spec.trigger_word == "ohwx"
    assert scan_dataset(tmp_path, resolution=64).items[0].caption == "a cat on a mat"


def test_captions_tolerate_bom_and_multiple_lines(tmp_path: Path) -> None:
    path = _image(tmp_path / "a.png", caption=None)
    path.with_suffix(".txt").write_bytes("\ufeffa red car,\r\n  parked outside \n\n".encode())
    _image(tmp_path / "b.png", caption=None)
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetError, match="caption 'b.txt' is not UTF-8 text.*re-save it as UTF-8"):
        scan_dataset(tmp_path, resolution=64)
    (tmp_path / "b.txt").unlink()
    (tmp_path / "b.png").unlink()
    assert scan_dataset(tmp_path, resolution=64).items[0].caption == "a red car, parked outside"


def test_layout_extensions_and_repeat_folders(tmp_path: Path) -> None:
    _image(tmp_path / "top.PNG")
    _image(tmp_path / "top2.JpEg")
    for i in range(4):
        _image(tmp_path / "3_cat" / f"{i}.jpg")
    _image(tmp_path / "extra" / "x.webp")
    _image(tmp_path / "extra" / "deeper" / "ignored.png")
    _image(tmp_path / ".hidden" / "ignored.png")
    (tmp_path / "notes.md").write_text("not an image")
    spec = scan_dataset(tmp_path, trigger_word="ohwx", resolution=64)
    assert [item.relative_path for item in spec.items] == [
        "top.PNG", "top2.JpEg", "3_cat/0.jpg", "3_cat/1.jpg", "3_cat/2.jpg", "3_cat/3.jpg", "extra/x.webp"]
    repeats = {item.relative_path: item.repeats for item in spec.items}
    assert repeats["3_cat/0.jpg"] == 3 and repeats["top.PNG"] == 1 and repeats["extra/x.webp"] == 1
    assert spec.samples_per_epoch == 3 * 4 + 3
    assert spec.summary().startswith(
        "7 images (3 repeats x 4 in 3_cat, 3 plain) → 15 samples/epoch, buckets 64x64 ×7")
    assert "trigger 'ohwx'" in spec.summary()
    groups = {item.group for item in spec.items}
    assert groups == {tmp_path.name, "3_cat", "extra"}
    assert spec.tag_frequency()["3_cat"] == {"ohwx": 4, "a photo": 4}


def test_zero_repeat_folder_is_rejected(tmp_path: Path) -> None:
    _image(tmp_path / "0_cat" / "a.png")
    with pytest.raises(DatasetError, match=r"sub-folder '0_cat' asks for 0 repeats; rename it .*'1_cat'"):
        scan_dataset(tmp_path, resolution=64)


def test_tag_frequency_counts_lowercased_stripped_tags_per_folder(tmp_path: Path) -> None:
    _image(tmp_path / "2_x" / "a.png", caption="Red Car,  street ,red car")
    _image(tmp_path / "2_x" / "b.png", caption="red car, night")
    spec = scan_dataset(tmp_path, resolution=64)
    assert spec.tag_frequency() == {"2_x": {"red car": 2, "street": 1, "night": 1}}


def test_buckets_follow_the_aspect_ratio(tmp_path: Path) -> None:
    _image(tmp_path / "square.png", size=(300, 300))
    _image(tmp_path / "portrait.png", size=(300, 400))
    _image(tmp_path / "landscape.png", size=(400, 300))
    spec = scan_dataset(tmp_path, resolution=512)
    buckets = {item.relative_path: item.bucket for item in spec.items}
    assert buckets == {"square.png": (512, 512), "portrait.png": (448, 576), "landscape.png": (576, 448)}
    for item in spec.items:
        assert tuple(load_pixels(item).shape) == (item.bucket[1], item.bucket[0], 3)
    assert "buckets 448x576 ×1, 512x512 ×1, 576x448 ×1" in spec.summary()


def test_validation_split_is_seeded_disjoint_and_counts_distinct_images(tmp_path: Path) -> None:
    for i in range(10):
        _image(tmp_path / "4_a" / f"{i}.png")
    spec = scan_dataset(tmp_path, resolution=64, validation_share=0.2, seed=1)
    train = {item.relative_path for item in spec.items}
    held = {item.relative_path for item in spec.validation_items}
    assert len(held) == 2 and len(train) == 8 and not train & held  # 20% of 10 distinct images
    assert spec.samples_per_epoch == 8 * 4
    assert "2 held out for validation" in spec.summary()
    again = scan_dataset(tmp_path, resolution=64, validation_share=0.2, seed=1)
    assert {item.relative_path for item in again.validation_items} == held
    seeds = {frozenset(i.relative_path for i in scan_dataset(tmp_path, resolution=64, validation_share=0.2,
                                                             seed=s).validation_items) for s in range(6)}
    assert len(seeds) > 1
    assert len(scan_dataset(tmp_path, resolution=64, validation_share=0.01).validation_items) == 1  # at least 1
    assert scan_dataset(tmp_path, resolution=64).validation_items == ()


def test_no_validation_image_from_a_single_image(tmp_path: Path) -> None:
    _image(tmp_path / "only.png")
    spec = scan_dataset(tmp_path, resolution=64, validation_share=0.5)
    assert len(spec.items) == 1 and spec.validation_items == ()
    _image(tmp_path / "second.png")
    spec = scan_dataset(tmp_path, resolution=64, validation_share=0.5)
    assert len(spec.items) == 1 and len(spec.validation_items) == 1


def test_fingerprint_changes_when_files_change(tmp_path: Path) -> None:
    image = _image(tmp_path / "1_a" / "a.png", caption="first")
    before = fingerprint(tmp_path)
    assert fingerprint(tmp_path) == before
    caption = image.with_suffix(".txt")
    caption.write_text("second caption")
    after_edit = fingerprint(tmp_path)
    assert after_edit != before
    # Same size, new mtime: still noticed.
    caption.write_text("second caption".upper())
    stat = caption.stat()
    os.utime(caption, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    after_touch = fingerprint(tmp_path)
    assert after_touch != after_edit
    _image(tmp_path / "b.png")
    after_add = fingerprint(tmp_path)
    assert after_add != after_touch
    (tmp_path / "unrelated.md").write_text("ignored")  # not read by scan_dataset: no re-run
    assert fingerprint(tmp_path) == after_add
    assert fingerprint(tmp_path / "missing") == fingerprint(tmp_path / "missing")
