"""The data options in training: batches carry masks, item weights and per-step captions; the loss weights by them
(a direct formula); a run with all of them on resumes bit-exact; changing one refuses the resume."""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.support.tiny_models import COND_DIM, COND_TOKENS, LATENT, attach, config, make_model
from trainer.data.captions import CaptionTransform
from trainer.data.latents import ClassImages, EncodedImage, LatentBatches
from trainer.errors import ResumeStateError
from trainer.training.config import DataOptions, LoraShape, TrainConfig
from trainer.training.denoising import Batch, noisy_inputs
from trainer.training.distributed import DataParallel
from trainer.training.loop import StepRecord, TrainResult, _batch_loss, train
from trainer.training.losses import LossSettings
from trainer.training.objective import NoiseSchedule
from trainer.training.resume_state import TrainState, load_state, save_state

SCHEDULE = NoiseSchedule.scaled_linear()
ALL_ON = DataOptions(caption_prefix="photo", shuffle_caption=True, keep_tokens=1, caption_dropout_rate=0.2,
                     caption_tag_dropout_rate=0.3, masked_loss=True, reg_folder="reg", prior_loss_weight=0.5)


@dataclass(frozen=True)
class Item:
    bucket: tuple[int, int] = (64, 64)
    repeats: int = 1


def text_encoder(calls: list[str] | None = None):
    """caption -> (context [tokens, width], None), a fixed function of the text (as a frozen CLIP is)."""
    def encode(caption: str) -> tuple[torch.Tensor, None]:
        if calls is not None:
            calls.append(caption)
        generator = torch.Generator().manual_seed(zlib.crc32(caption.encode()))
        return torch.randn(COND_TOKENS, COND_DIM, generator=generator), None
    return encode


def _images(count: int, offset: int, masked: bool, captions: tuple[str, ...]) -> list[EncodedImage]:
    generator = torch.Generator().manual_seed(offset)
    images = []
    for i in range(count):
        latent = torch.randn(*LATENT, generator=generator)
        mask = torch.rand(1, *LATENT[1:], generator=generator) if masked and i % 2 == 0 else None
        caption = captions[i % len(captions)]
        images.append(EncodedImage(latent, latent.flip(-1) * 0.5, caption, text_encoder()(caption)[0], None, mask))
    return images


def all_on_batches(options: DataOptions = ALL_ON, calls: list[str] | None = None) -> LatentBatches:
    train_images = _images(4, 1, options.masked_loss, ("sks, red hair, smiling, outdoors", "sks, tree, sky"))
    class_images = ClassImages((Item(), Item(), Item()), _images(3, 2, options.masked_loss, ("dog", "dog, grass")),
                               CaptionTransform(options, affixes=False), options.prior_loss_weight)
    return LatentBatches(tuple(Item() for _ in range(4)), train_images, 2, seed=3,
                         captions=CaptionTransform(options, "sks"), text_encoder=text_encoder(calls),
                         class_images=class_images)


def test_masked_and_weighted_loss_equals_the_direct_formula() -> None:
    model = make_model()
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(3, *LATENT, generator=generator)
    cond = torch.randn(3, COND_TOKENS, COND_DIM, generator=generator)
    mask = torch.rand(3, 1, *LATENT[1:], generator=generator)
    weight = torch.tensor([1.0, 0.5, 1.0])
    state = generator.get_state()
    loss, _ = _batch_loss(model, Batch(latents, cond, mask, weight), SCHEDULE, generator, torch.device("cpu"), "no",
                          None, LossSettings())
    generator.set_state(state)
    x_t, target, timesteps = noisy_inputs(latents, SCHEDULE, generator, torch.device("cpu"), None, None)
    with torch.no_grad():
        prediction = model(x_t, timesteps, cond)
    expected = (((prediction - target) ** 2 * mask).mean(dim=(1, 2, 3)) * weight).mean()
    assert torch.allclose(loss.detach(), expected, rtol=1e-6, atol=0)


def test_shards_of_a_masked_weighted_batch_add_up_to_its_loss() -> None:
    """Under torchrun each process takes its items of the mask and weights with its items of the batch."""
    model = make_model()
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(3, *LATENT, generator=generator)
    cond = torch.randn(3, COND_TOKENS, COND_DIM, generator=generator)
    batch = Batch(latents, cond, torch.rand(3, 1, *LATENT[1:], generator=generator), torch.tensor([1.0, 0.5, 0.25]))
    state = generator.get_state()

    def loss(shard: DataParallel | None) -> torch.Tensor:
        generator.set_state(state)  # every process draws the global batch's noise
        with torch.no_grad():
            return _batch_loss(model, batch, SCHEDULE, generator, torch.device("cpu"), "no", None, LossSettings(),
                               shard=shard)[0]
    shards = [loss(DataParallel(rank, 2, torch.device("cpu"))) for rank in range(2)]
    assert torch.allclose(shards[0] + shards[1], loss(None), rtol=1e-6, atol=0)


def test_batches_carry_the_step_captions_masks_and_weights() -> None:
    calls: list[str] = []
    batches = all_on_batches(calls=calls)
    generator = torch.Generator().manual_seed(5)
    masked = 0
    for index in range(12):
        replay = torch.Generator()
        replay.set_state(generator.get_state())
        batch = batches.batch(index, generator)
        masked += batch.mask is not None
        epoch, position = divmod(index, batches.batches_per_epoch())
        for row, i in enumerate(batches._epoch(epoch)[position]):
            image = batches._encoded[i]
            mirrored = bool(torch.rand((), generator=replay) < 0.5)  # the flip draw, then the caption's draws
            text = batches._captions[i].apply(image.caption, replay)
            expected_context = image.context if text == image.caption else text_encoder()(text)[0]
            assert torch.equal(batch.cond[row], expected_context)
            assert torch.equal(batch.latents[row], image.flipped if mirrored else image.latent)
            expected_mask = torch.ones(1, *LATENT[1:]) if image.mask is None else image.mask
            if batch.mask is None:  # no image of the batch has a mask: the loss is not weighted
                assert image.mask is None
            else:
                assert torch.equal(batch.mask[row], expected_mask.flip(-1) if mirrored else expected_mask)
            assert batch.weight is not None and float(batch.weight[row]) == (0.5 if i >= 4 else 1.0)
        assert torch.equal(replay.get_state(), generator.get_state())
    assert masked > 0 and calls
    assert all(not c.startswith("photo") for c in calls if "dog" in c)  # no prefix on class captions


def test_static_options_draw_nothing_more_than_off() -> None:
    off = all_on_batches(DataOptions(reg_folder="reg"))
    static = all_on_batches(DataOptions(reg_folder="reg", caption_prefix="photo", keep_tokens_separator="|||"))
    first, second = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for index in range(6):
        a, b = off.batch(index, first), static.batch(index, second)
        assert torch.equal(a.latents, b.latents) and a.mask is None and b.mask is None
    assert torch.equal(first.get_state(), second.get_state())


def _cfg(options: DataOptions, steps: int = 8) -> TrainConfig:
    return dataclasses.replace(config(steps=steps, lora=LoraShape(rank=2, alpha=1.0, dropout=0.1),
                                      grad_accumulation=2, noise_offset=0.05),
                               data=options)


def _train(cfg: TrainConfig, stop_at: int | None = None,
           start: TrainState | None = None) -> tuple[dict[str, torch.Tensor], TrainResult]:
    model = make_model()
    adapters = attach(model, cfg.lora, seed=cfg.optimisation.seed)
    records: list[StepRecord] = []
    stop = (lambda: "stop" if records and records[-1].step >= stop_at else None) if stop_at else None
    result = train(model, adapters, all_on_batches(cfg.data).batch, SCHEDULE, cfg, records.append,
                   should_stop=stop, start_state=start)
    return adapters.state_dict(), result


def test_a_run_with_every_data_option_resumes_bit_exact(tmp_path: Path) -> None:
    cfg = _cfg(ALL_ON)
    full, full_result = _train(cfg)
    _, first = _train(cfg, stop_at=3)
    save_state(tmp_path / "state.safetensors", first.state)
    resumed, resumed_result = _train(cfg, start=load_state(tmp_path / "state.safetensors", expected_config=cfg))
    assert resumed_result.loss_history == full_result.loss_history
    assert all(torch.equal(resumed[k], v) for k, v in full.items())
    plain, _ = _train(_cfg(DataOptions(reg_folder="reg")))
    assert any(not torch.equal(plain[k], v) for k, v in full.items())  # the options change what is trained


def test_resume_refuses_changed_data_options(tmp_path: Path) -> None:
    _, first = _train(_cfg(ALL_ON, steps=2))
    save_state(tmp_path / "state.safetensors", first.state)
    other = _cfg(dataclasses.replace(ALL_ON, caption_dropout_rate=0.1, masked_loss=False), steps=4)
    with pytest.raises(ResumeStateError, match=r"other dataset options \(caption_dropout_rate: saved 0\.2, now 0\.1; "
                                               r"masked_loss: saved True, now False\)"):
        load_state(tmp_path / "state.safetensors", expected_config=other)
    assert load_state(tmp_path / "state.safetensors").config.data == ALL_ON  # recorded in the state
