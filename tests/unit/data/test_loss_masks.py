"""Loss masks: found beside the images (masks/<name>) or in the alpha channel, fitted like the image, refused by
name when corrupt or of another size, reduced to the latent by area."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data.images import load_pixels
from trainer.data.masks import latent_mask, load_mask
from trainer.data.scan import fingerprint, scan_dataset
from trainer.errors import DatasetError
from trainer.training.config import DataOptions

MASKED = DataOptions(masked_loss=True)


def _pattern(size: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0]), dtype=np.uint8)


def _image(path: Path, size: tuple[int, int] = (200, 100), caption: str = "a photo") -> np.ndarray:
    """An RGB image whose red channel is a random pattern (returned), with its caption."""
    path.parent.mkdir(parents=True, exist_ok=True)
    red = _pattern(size, 1)
    rgb = np.stack([red, np.full_like(red, 90), np.full_like(red, 140)], axis=-1)
    Image.fromarray(rgb, "RGB").save(path)
    path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return red


def test_a_mask_file_is_found_checked_and_fitted_exactly_like_its_image(tmp_path: Path) -> None:
    red = _image(tmp_path / "a.png")
    (tmp_path / "masks").mkdir()
    Image.fromarray(red, "L").save(tmp_path / "masks" / "a.png")  # the image's red channel, as a grey mask
    spec = scan_dataset(tmp_path, resolution=64, options=MASKED)
    (item,) = spec.items  # the masks folder is not a group of training images
    assert item.mask_path == str(tmp_path / "masks" / "a.png") and not item.alpha_mask
    mask = load_mask(item)
    assert mask is not None and mask.shape == (64, 64)
    # 200x100 -> covered at 128x64 (LANCZOS), centre 64x64: the same pixels as the image's red channel
    assert torch.equal(mask, load_pixels(item)[..., 0])


def test_the_alpha_channel_is_the_mask_when_there_is_no_file(tmp_path: Path) -> None:
    alpha = np.zeros((64, 128), dtype=np.uint8)
    alpha[:, 64:] = 255  # right half trained
    rgba = np.dstack([np.full((64, 128, 3), 120, np.uint8), alpha])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut_out.png")
    (tmp_path / "cut_out.txt").write_text("a cat")
    (item,) = scan_dataset(tmp_path, resolution=64, options=MASKED).items
    assert item.alpha_mask and item.mask_path is None
    mask = load_mask(item)
    assert mask is not None
    expected = torch.zeros(64, 64)
    expected[:, 32:] = 1.0  # columns 32..96 of 128 are kept: 32 transparent, then 32 opaque
    assert torch.equal(mask, expected)


def test_masks_in_repeat_folders_and_images_without_any(tmp_path: Path) -> None:
    _image(tmp_path / "3_cat" / "a.png", (64, 64))
    _image(tmp_path / "3_cat" / "b.png", (64, 64))
    (tmp_path / "3_cat" / "masks").mkdir()
    Image.new("L", (64, 64), 255).save(tmp_path / "3_cat" / "masks" / "A.PNG")  # case differs
    items = {i.relative_path: i for i in scan_dataset(tmp_path, resolution=64, options=MASKED).items}
    assert set(items) == {"3_cat/a.png", "3_cat/b.png"}
    assert items["3_cat/a.png"].mask_path is not None and load_mask(items["3_cat/b.png"]) is None


def test_without_masked_loss_masks_are_not_read(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "a.png").write_bytes(b"not an image")
    spec = scan_dataset(tmp_path, resolution=64)
    (item,) = spec.items
    assert item.mask_path is None and not item.alpha_mask and load_mask(item) is None
    # masks/ is never trained as images; without masked_loss the summary says so, rather than losing them quietly
    assert spec.warnings == ("the 'masks' folder's 1 images are not trained: that folder holds the images' masks "
                             "for masked_loss; rename it to train its images.",)


def test_no_mask_at_all_is_a_warning(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    spec = scan_dataset(tmp_path, resolution=64, options=MASKED)
    assert any("no image has a mask" in w for w in spec.warnings) and "0 masked" in spec.summary()


def test_a_mask_of_another_size_is_refused_naming_both_files(tmp_path: Path) -> None:
    _image(tmp_path / "2_dog" / "a.png", (200, 100))
    (tmp_path / "2_dog" / "masks").mkdir()
    Image.new("L", (100, 50), 255).save(tmp_path / "2_dog" / "masks" / "a.png")
    with pytest.raises(DatasetError, match=r"mask '2_dog/masks/a\.png' is 100x50 px but its image '2_dog/a\.png' "
                                           r"is 200x100 px; a mask must have its image's size"):
        scan_dataset(tmp_path, resolution=64, options=MASKED)


def test_a_corrupt_mask_is_refused_by_name(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetError, match=r"'masks/a\.png' is not a readable image"):
        scan_dataset(tmp_path, resolution=64, options=MASKED)


def test_latent_mask_is_the_mean_of_each_block() -> None:
    mask = torch.rand(64, 48, generator=torch.Generator().manual_seed(0))
    expected = mask.reshape(8, 8, 6, 8).mean(dim=(1, 3))
    assert torch.allclose(latent_mask(mask, (8, 6))[0], expected, atol=1e-6)


def test_fingerprint_follows_masks_in_repeat_folders(tmp_path: Path) -> None:
    _image(tmp_path / "3_cat" / "a.png", (64, 64))
    (tmp_path / "3_cat" / "masks").mkdir()
    mask = tmp_path / "3_cat" / "masks" / "a.png"
    Image.new("L", (64, 64), 255).save(mask)
    before = fingerprint(tmp_path)
    Image.new("L", (64, 64), 0).save(mask)
    os.utime(mask, ns=(1, 1))
    assert fingerprint(tmp_path) != before
