"""Regularisation (class) images: sd-scripts' balanced repeats, class names from N_class folders, the share of
class draws per epoch and their loss weight."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from trainer.data.captions import CaptionTransform
from trainer.data.class_images import balanced_repeats, with_class_images
from trainer.data.latents import ClassImages, EncodedImage, LatentBatches
from trainer.data.scan import scan_dataset
from trainer.errors import DatasetError
from trainer.training.config import DataOptions


def _image(path: Path, caption: str | None = None, size: tuple[int, int] = (64, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")


@pytest.mark.parametrize(("train_samples", "folder_repeats", "expected"), [
    (10, [1, 1, 1], [4, 3, 3]),  # first pass 3, then one more each in order until 10
    (5, [3, 3], [3, 3]),  # the first pass registers whole folder repeats, overshooting to 6
    (2, [1, 1, 1], [1, 1, 0]),  # the third image is never reached
    (3, [2], [3]),
])
def test_balanced_repeats_follow_sd_scripts(train_samples: int, folder_repeats: list[int],
                                            expected: list[int]) -> None:
    assert balanced_repeats(train_samples, folder_repeats) == expected


def test_class_images_take_their_folder_class_name_and_balance_the_epoch(tmp_path: Path) -> None:
    for name in ("a", "b"):
        _image(tmp_path / "data" / "5_sks" / f"{name}.png", "sks dog")
    for name in ("c", "d", "e"):
        _image(tmp_path / "reg" / "1_dog" / f"{name}.png")
    _image(tmp_path / "reg" / "1_dog" / "f.png", "a brown dog")
    options = DataOptions(reg_folder="reg", prior_loss_weight=0.5)
    spec = with_class_images(scan_dataset(tmp_path / "data", resolution=64, options=options), tmp_path / "reg")
    assert spec.samples_per_epoch == 10 and spec.class_folder == str(tmp_path / "reg")
    assert [(i.relative_path, i.caption, i.repeats) for i in spec.class_items] == [
        ("1_dog/c.png", "dog", 3), ("1_dog/d.png", "dog", 3), ("1_dog/e.png", "dog", 2),
        ("1_dog/f.png", "a brown dog", 2)]
    assert "4 class images → 10 samples/epoch (prior loss weight 0.5)" in spec.summary()
    metadata = spec.kohya_metadata()
    assert metadata["ss_num_reg_images"] == "4" and metadata["ss_prior_loss_weight"] == "0.5"
    assert '"reg/1_dog": {"n_repeats": 3, "img_count": 4}' in metadata["ss_reg_dataset_dirs"]


def test_class_images_need_a_caption_or_a_class_folder(tmp_path: Path) -> None:
    _image(tmp_path / "data" / "a.png", "sks")
    _image(tmp_path / "reg" / "loose.png")
    spec = scan_dataset(tmp_path / "data", resolution=64)
    with pytest.raises(DatasetError, match=r"class image\(s\) 'loose\.png' in '.*reg' have no caption and no class "
                                           r"name; add \.txt captions, or move them into a sub-folder named like"):
        with_class_images(spec, tmp_path / "reg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no images found in regularisation folder"):
        with_class_images(spec, tmp_path / "empty")
    with pytest.raises(DatasetError, match=r"regularisation folder '.*missing' does not exist"):
        with_class_images(spec, tmp_path / "missing")


class _Item:
    def __init__(self, repeats: int) -> None:
        self.bucket, self.repeats = (64, 64), repeats


def _encoded(values: range) -> list[EncodedImage]:
    return [EncodedImage(torch.full((4, 8, 8), float(v)), None, f"c{v}", torch.full((3, 8), float(v)))
            for v in values]


def test_each_epoch_draws_the_class_images_as_often_as_set_and_weights_them() -> None:
    train, reg = (_Item(2), _Item(2), _Item(1)), (_Item(3), _Item(2))  # 5 training, 5 class samples per epoch
    class_images = ClassImages(reg, _encoded(range(10, 12)), CaptionTransform(), 0.25)  # type: ignore[arg-type]
    batches = LatentBatches(train, _encoded(range(3)), 2, seed=4, class_images=class_images)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(0)
    drawn: list[float] = []
    for index in range(batches.batches_per_epoch() * 3):  # three epochs
        batch = batches.batch(index, generator)
        values = batch.latents[:, 0, 0, 0]
        assert batch.weight is not None
        assert torch.equal(batch.weight, torch.where(values >= 10, 0.25, 1.0))
        drawn.extend(values.tolist())
    assert sorted(drawn) == sorted([0.0, 0.0, 1.0, 1.0, 2.0, 10.0, 10.0, 10.0, 11.0, 11.0] * 3)
    fixed, count = batches.fixed(limit=8)  # the loss at fixed noise: training images only, no weights
    assert count == 3 and fixed(2, generator)[0][0, 0, 0, 0] == 2.0
