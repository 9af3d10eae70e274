"""Memory estimate: monotonic in what costs memory, and suggestions that really fit."""

from __future__ import annotations

import pytest

from trainer.training.memory import (
    GIB,
    OFFLOAD_BUFFER_LAYERS,
    OFFLOAD_STEP,
    MemoryPlan,
    estimate_training_memory,
    fits,
    plan_memory,
)

SD15 = 860_000_000 * 2


def _total(**kwargs: object) -> int:
    args: dict = {"model_params_bytes": SD15, "trainable_params": 3_000_000, "batch_size": 2, "resolution": 512}
    args.update(kwargs)
    return estimate_training_memory(**args).total_bytes


def test_monotonic() -> None:
    assert _total(batch_size=1) < _total(batch_size=2) < _total(batch_size=4)
    assert _total(resolution=512) < _total(resolution=768) < _total(resolution=(1024, 1024))
    assert _total(trainable_params=1_000_000) < _total(trainable_params=10_000_000)
    assert _total(model_params_bytes=SD15) < _total(model_params_bytes=3 * SD15)
    assert _total(gradient_checkpointing=True) < _total(gradient_checkpointing=False)
    assert _total(optimizer="adamw8bit") < _total(optimizer="adamw")
    assert _total(mixed_precision="bf16") < _total(mixed_precision="no")


def test_a_videos_latent_frames_count_as_its_pixels_do() -> None:
    """Wan at 480 x 832, 81 frames = 21 latent frames: the activations of 21 such images, the weights once."""
    one, video = (estimate_training_memory(SD15, 3_000_000, 1, (832, 480), latent_channels=16, latent_frames=frames)
                  for frames in (1, 21))
    assert video.activation_bytes == pytest.approx(21 * one.activation_bytes, rel=1e-6)
    assert video.weights_bytes == one.weights_bytes and video.optimizer_bytes == one.optimizer_bytes
    with pytest.raises(ValueError, match="latent_frames = 0"):
        estimate_training_memory(SD15, 3_000_000, 1, 512, latent_frames=0)


def test_plausible_for_sd15() -> None:
    # SD1.5, 512 px, batch 1, fp16, no checkpointing: public reports put this at roughly 6-8 GiB.
    assert 4 * GIB < _total(batch_size=1) < 10 * GIB


def test_components_add_up() -> None:
    e = estimate_training_memory(SD15, 1_000_000, 1, 512)
    assert e.weights_bytes == SD15 and e.lora_bytes == 4_000_000 and e.gradient_bytes == 4_000_000
    assert e.optimizer_bytes == 8_000_000 + 4  # two fp32 moments, and a 0-d fp32 step for the one flat tensor
    assert e.total_bytes == sum((e.weights_bytes, e.lora_bytes, e.gradient_bytes, e.optimizer_bytes,
                                 e.activation_bytes, e.overhead_bytes))


def test_fits_gives_no_suggestions_when_it_fits() -> None:
    e = estimate_training_memory(SD15, 3_000_000, 2, 512)
    assert fits(e, e.total_bytes) == (True, [])


def test_suggestions_fit_and_start_with_checkpointing() -> None:
    e = estimate_training_memory(SD15, 3_000_000, 4, 768, rank=16)
    budget = _total(batch_size=1, resolution=768) + 1  # also fits checkpointing at batch 4
    ok, suggestions = fits(e, budget)
    assert not ok and suggestions[0].startswith("turn on gradient checkpointing")
    assert any(s.startswith("batch_size 1 with grad_accumulation 4") for s in suggestions)
    assert all("GiB" in s for s in suggestions)


def test_combined_or_impossible() -> None:
    e = estimate_training_memory(SD15, 3_000_000, 2, 512)
    combined = estimate_training_memory(SD15, 3_000_000, 1, 512, gradient_checkpointing=True,
                                        optimizer="adamw8bit").total_bytes
    ok, suggestions = fits(e, combined)
    assert not ok and len(suggestions) >= 1
    ok, suggestions = fits(e, SD15 // 2)
    assert not ok and "for the model weights" in suggestions[0]


def test_adamw8bit_is_suggested_only_where_it_runs() -> None:
    e = estimate_training_memory(SD15, 300_000_000, 1, 512, gradient_checkpointing=True)
    with_8bit = estimate_training_memory(SD15, 300_000_000, 1, 512, gradient_checkpointing=True,
                                         optimizer="adamw8bit").total_bytes
    ok, suggestions = fits(e, with_8bit)
    assert not ok and any("adamw8bit" in s for s in suggestions)
    ok, suggestions = fits(e, with_8bit, eight_bit=False)  # a CPU: bitsandbytes' 8-bit AdamW needs CUDA
    assert not ok and not any("adamw8bit" in s for s in suggestions)
    combined = estimate_training_memory(SD15, 3_000_000, 1, 512, gradient_checkpointing=True).total_bytes
    ok, suggestions = fits(estimate_training_memory(SD15, 3_000_000, 8, 1024), combined, eight_bit=False)
    assert not ok and all("adamw8bit" not in s for s in suggestions)


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="trainable_params = -1"):
        estimate_training_memory(SD15, -1, 1, 512)
    with pytest.raises(ValueError, match="batch_size = 0"):
        estimate_training_memory(SD15, 1, 0, 512)


def test_memory_plan_keeps_what_fits_and_auto_turns_on_checkpointing_only_when_that_alone_fits() -> None:
    def estimate(checkpointing: bool):
        return estimate_training_memory(1_720_000_000, 3_000_000, 8, 512, gradient_checkpointing=checkpointing)

    full, checkpointed = estimate(False).total_bytes, estimate(True).total_bytes
    assert checkpointed < full
    plenty = plan_memory(estimate(False), full, automatic=True)
    gib = f"{full / 2**30:.1f} GiB"
    assert plenty == MemoryPlan(False, f"full activations: about {gib} of {gib} available")
    between = (full + checkpointed) // 2
    chosen = plan_memory(estimate(False), between, automatic=True)
    assert chosen is not None and chosen.gradient_checkpointing
    assert chosen.description == (f"gradient checkpointing (auto): about {checkpointed / 2**30:.1f} GiB with it, "
                                  f"{full / 2**30:.1f} GiB without, {between / 2**30:.1f} GiB available")
    assert plan_memory(estimate(False), between, automatic=False) is None  # as_set: refused, nothing changed
    assert plan_memory(estimate(False), checkpointed - 1, automatic=True) is None  # not even with it
    already = plan_memory(estimate(True), checkpointed, automatic=False)
    assert already is not None and already.gradient_checkpointing and "(as set)" in already.description


def test_an_fp8_base_holds_its_weights_cast_to_the_compute_dtype_unless_checkpointed() -> None:
    """Flux-sized fp8 weights (12 GB) computed in bf16: without checkpointing a step keeps every layer's bf16 cast
    for backward (24 GB more); auto turns checkpointing on where only that makes the run fit."""
    fp8, casts = 12 * 10**9, 24 * 10**9

    def estimate(checkpointing: bool, cast: int = casts):
        return estimate_training_memory(fp8, 10_000_000, 1, 1024, mixed_precision="bf16", cast_weights_bytes=cast,
                                        gradient_checkpointing=checkpointing)

    assert estimate(False).activation_bytes == estimate(False, cast=0).activation_bytes + casts
    assert estimate(True).activation_bytes == estimate(True, cast=0).activation_bytes
    budget = estimate(True).total_bytes + GIB  # a 48 GiB card, say: fits with checkpointing only
    assert estimate(False).total_bytes > budget
    chosen = plan_memory(estimate(False), budget, automatic=True)
    assert chosen is not None and chosen.gradient_checkpointing
    with pytest.raises(ValueError, match="cast_weights_bytes = -1"):
        estimate(False, cast=-1)


def test_offloading_weights_counts_only_the_share_on_the_device_plus_its_streaming_buffer() -> None:
    layer = 50_000_000
    full = estimate_training_memory(SD15, 3_000_000, 1, 512, gradient_checkpointing=True)
    half = estimate_training_memory(SD15, 3_000_000, 1, 512, offload_fraction=0.5, largest_layer_bytes=layer)
    assert half.weights_bytes == round(SD15 * 0.5) + OFFLOAD_BUFFER_LAYERS * layer
    assert half.activation_bytes == full.activation_bytes  # offloading implies checkpointing
    assert half.total_bytes < full.total_bytes
    with pytest.raises(ValueError, match="offload_fraction = 1.5"):
        estimate_training_memory(SD15, 1, 1, 512, offload_fraction=1.5)


def test_auto_offloads_the_smallest_share_that_fits_only_where_offloading_frees_device_memory() -> None:
    layer = 20_000_000
    as_set = estimate_training_memory(SD15, 3_000_000, 1, 512, largest_layer_bytes=layer)
    checkpointed = estimate_training_memory(SD15, 3_000_000, 1, 512, gradient_checkpointing=True,
                                            largest_layer_bytes=layer).total_bytes
    available = checkpointed - SD15 // 3  # a third of the weights must leave the device
    assert plan_memory(as_set, available, automatic=True) is None  # the CPU: offloading to itself frees nothing
    plan = plan_memory(as_set, available, automatic=True, can_offload=True)
    assert plan is not None and plan.gradient_checkpointing
    # The smallest multiple of OFFLOAD_STEP that fits: the one below it does not.
    share = plan.offload_fraction
    assert abs(share / OFFLOAD_STEP - round(share / OFFLOAD_STEP)) < 1e-9 and 1 / 3 < share < 1
    def total(fraction: float) -> int:
        return estimate_training_memory(SD15, 3_000_000, 1, 512, offload_fraction=fraction,
                                        largest_layer_bytes=layer).total_bytes
    assert total(share) <= available < total(share - OFFLOAD_STEP)
    assert f"{share * 100:.0f}% of the weights offloaded" in plan.description and "(auto)" in plan.description
    assert plan_memory(as_set, available, automatic=False, can_offload=True) is None  # as_set refuses
    fits_now, options = fits(as_set, available, eight_bit=False, can_offload=True)
    assert not fits_now and any(o.startswith(f"offload_fraction {share:.2f}") for o in options)
    assert plan_memory(as_set, total(1.0) - 1, automatic=True, can_offload=True) is None  # not even all of them


def test_an_offload_set_by_hand_is_kept_and_named_when_it_fits() -> None:
    e = estimate_training_memory(SD15, 3_000_000, 1, 512, offload_fraction=0.25, largest_layer_bytes=10_000_000)
    plan = plan_memory(e, e.total_bytes, automatic=False)
    assert plan == MemoryPlan(True, plan.description, 0.25)
    assert "25% of the weights offloaded (as set)" in plan.description
