"""Resume contract: stop at k, save, load, continue to N == one uninterrupted run (CPU fp32, bitwise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.support.tiny_models import (
    TinyTextEncoder,
    attach,
    batch_fn,
    caption_batches,
    config,
    dataset,
    make_model,
    text_denoiser,
)
from trainer.errors import LoraWriteError, ResumeStateError, ResumeStateWriteError
from trainer.safetensors_io import read_safetensors
from trainer.training.config import LoraShape, TrainConfig
from trainer.training.loop import StepRecord, TrainResult, train
from trainer.training.objective import NoiseSchedule
from trainer.training.resume_state import TrainState, load_state, save_state

SCHEDULE = NoiseSchedule.scaled_linear()
# Everything that draws randomness or keeps state is on: dropout, noise offset, min-SNR, shuffling,
# accumulation, warmup + cosine (lr depends on the step), weight decay.
CONFIG = config(steps=8, lora=LoraShape(rank=2, alpha=1.0, dropout=0.2, targets="attention_ff_conv"),
                grad_accumulation=2, noise_offset=0.1, min_snr_gamma=5.0, schedule="cosine", warmup_steps=2)


def _train(cfg: TrainConfig, stop_at: int | None = None, start: TrainState | None = None,
           init_seed: int | None = None) -> tuple[dict[str, torch.Tensor], TrainResult]:
    model = make_model()
    adapters = attach(model, cfg.lora, seed=cfg.optimisation.seed if init_seed is None else init_seed)
    latents, cond = dataset()
    records: list[StepRecord] = []
    stop = (lambda: "stop" if records and records[-1].step >= stop_at else None) if stop_at else None
    result = train(model, adapters, batch_fn(latents, cond, 2), SCHEDULE, cfg, records.append,
                   should_stop=stop, start_state=start)
    return adapters.state_dict(), result


def test_stop_save_load_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full, full_result = _train(CONFIG)
    _, first = _train(CONFIG, stop_at=3)
    assert first.steps_completed == 3 and first.stopped_early == "stop"
    path = tmp_path / "run_state.safetensors"
    save_state(path, first.state)
    state = load_state(path, expected_config=CONFIG)
    # different init seed: everything must come from the state file
    resumed, resumed_result = _train(CONFIG, start=state, init_seed=1234)
    assert resumed_result.steps_completed == 8
    assert resumed_result.loss_history == full_result.loss_history  # one continuous history
    for key, value in full.items():
        assert torch.equal(resumed[key], value), key


def test_state_file_round_trip_and_layout(tmp_path: Path) -> None:
    _, result = _train(config(steps=2))
    path = tmp_path / "s.safetensors"
    save_state(path, result.state)
    tensors, metadata = read_safetensors(path)
    assert metadata["loralab.state.format"] == "loralab.resume_state"
    assert tensors["rng::generator"].dtype == torch.uint8
    assert any(k.startswith("optim::") and k.endswith("::exp_avg_sq") for k in tensors)
    assert not any(k.endswith(".lora_down.weight") and not k.startswith("lora::") for k in tensors)
    loaded = load_state(path)
    assert loaded.step == 2 and loaded.config == result.state.config
    assert loaded.loss_history == list(result.loss_history)
    assert loaded.smoothed_loss == result.smoothed_loss and loaded.param_names == result.state.param_names
    assert torch.equal(loaded.generator_state, result.state.generator_state)
    assert all(torch.equal(loaded.lora[k], v) for k, v in result.state.lora.items())
    assert json.loads(metadata["loralab.state.param_names"]) == result.state.param_names


def test_resume_refuses_other_lora_shape(tmp_path: Path) -> None:
    _, result = _train(config(steps=2))
    save_state(tmp_path / "s.safetensors", result.state)
    other = config(steps=4, lora=LoraShape(rank=3, alpha=4.0, targets="attention"))
    with pytest.raises(ResumeStateError, match=r"different LoRA shape \(rank: saved 4, now 3; targets: "
                                               r"saved 'attention_ff_conv', now 'attention'\)"):
        load_state(tmp_path / "s.safetensors", expected_config=other)
    with pytest.raises(ResumeStateError, match=r"s.safetensors' is at step 2, but steps = 1\. Set steps to 2"):
        load_state(tmp_path / "s.safetensors", expected_config=config(steps=1))


def test_load_state_refuses_a_lora_file(tmp_path: Path) -> None:
    from trainer.safetensors_io import write_safetensors_atomic
    write_safetensors_atomic(tmp_path / "lora.safetensors", {"x.alpha": torch.tensor(1.0)}, {"ss_network_dim": "4"})
    with pytest.raises(ResumeStateError, match="is not a LoRA Lab resume state"):
        load_state(tmp_path / "lora.safetensors")


class HostCancelled(Exception):
    """Stands for a host exception raised from inside a layer's forward when the user cancels."""


def test_exception_inside_a_step_resumes_like_an_uninterrupted_run(tmp_path: Path) -> None:
    """Bug: the host's Cancel raises inside a layer mid-step; the run lost all its work."""
    full, full_result = _train(CONFIG)
    model = make_model()
    adapters = attach(model, CONFIG.lora, seed=CONFIG.optimisation.seed)
    latents, cond = dataset()
    batches = batch_fn(latents, cond, 2)
    calls = {"n": 0}

    def cancelling_batches(index: int, generator: torch.Generator):
        calls["n"] += 1
        if calls["n"] == 8:  # the second micro-batch of step 4: step 4 is half done
            raise HostCancelled()
        return batches(index, generator)

    result = train(model, adapters, cancelling_batches, SCHEDULE, CONFIG, lambda record: None,
                   interruptions=(HostCancelled,))
    assert result.stopped_early == "interrupted" and result.steps_completed == 3
    save_state(tmp_path / "state.safetensors", result.state)
    resumed, resumed_result = _train(CONFIG, start=load_state(tmp_path / "state.safetensors", CONFIG), init_seed=99)
    assert resumed_result.loss_history == full_result.loss_history
    for key, value in full.items():
        assert torch.equal(resumed[key], value), key


def test_other_exceptions_inside_a_step_still_propagate() -> None:
    model = make_model()
    adapters = attach(model, CONFIG.lora)
    latents, cond = dataset()

    def broken(index: int, generator: torch.Generator):
        raise KeyError("a real bug")

    with pytest.raises(KeyError):
        train(model, adapters, broken, SCHEDULE, CONFIG, lambda record: None, interruptions=(HostCancelled,))


def test_resume_with_a_text_encoder_lora_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = config(steps=6, lora=LoraShape(rank=2, alpha=2.0, targets="attention_ff", train_text_encoder=True,
                                         text_encoder_lr=3e-3))

    def run(stop_at: int | None = None, start: TrainState | None = None) -> tuple[dict, TrainResult]:
        model, text_encoder = make_model(), TinyTextEncoder()
        adapters = attach(model, cfg.lora, seed=cfg.optimisation.seed)
        # the key prefix Train LoRA uses for CLIP layers (with a ':') goes through the state file too
        adapters.attach(text_encoder, list(TinyTextEncoder.LAYERS), key_prefix="text_encoder:", group="text_encoder")
        records: list[StepRecord] = []
        stop = (lambda: "stop" if records and records[-1].step >= stop_at else None) if stop_at else None
        result = train(text_denoiser(model, text_encoder), adapters, caption_batches(), SCHEDULE, cfg,
                       records.append, should_stop=stop, start_state=start)
        return adapters.state_dict(), result

    full, full_result = run()
    _, first = run(stop_at=2)
    path = tmp_path / "te_state.safetensors"
    save_state(path, first.state)
    resumed, resumed_result = run(start=load_state(path, expected_config=cfg))
    assert resumed_result.loss_history == full_result.loss_history
    assert any(k.startswith("text_encoder:") for k in full)
    for key, value in full.items():
        assert torch.equal(resumed[key], value), key


# --- damaged, partial and foreign files: ResumeStateError naming the file, never a raw KeyError ------------

@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real resume state of a 2-step run, shared by the tests that damage copies of it."""
    _, result = _train(config(steps=4), stop_at=2)
    path = tmp_path_factory.mktemp("saved") / "run_state.safetensors"
    save_state(path, result.state)
    return path


def _altered_copy(source: Path, target: Path, drop: tuple[str, ...] = (), metadata: dict[str, str] | None = None,
                  tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A copy of a real state file with header entries / tensors removed or replaced."""
    from trainer.safetensors_io import write_safetensors_atomic
    saved_tensors, saved_metadata = read_safetensors(source)
    saved_metadata = {k: v for k, v in saved_metadata.items() if k not in drop} | (metadata or {})
    saved_tensors = {k: v for k, v in saved_tensors.items() if k not in drop} | (tensors or {})
    write_safetensors_atomic(target, saved_tensors, saved_metadata)
    return target


def test_truncated_state_file_names_it(saved_run: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut_state.safetensors"
    cut.write_bytes(saved_run.read_bytes()[:-100])
    with pytest.raises(ResumeStateError, match=r"Cannot resume from '.*cut_state.safetensors': the file is "
                                               r"truncated.*turn resume off to start a new run") as info:
        load_state(cut, expected_config=config(steps=4))
    assert info.value.path == str(cut)


def test_random_bytes_are_not_a_state(tmp_path: Path) -> None:
    path = tmp_path / "noise_state.safetensors"
    path.write_bytes(torch.randint(0, 256, (256,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ResumeStateError, match=r"Cannot resume from '.*noise_state.safetensors': the file is not "
                                               r"a safetensors file"):
        load_state(path)


def test_a_foreign_safetensors_file_is_not_a_state(tmp_path: Path) -> None:
    from trainer.safetensors_io import write_safetensors_atomic
    write_safetensors_atomic(tmp_path / "weights.safetensors", {"w": torch.ones(2)}, {"author": "someone"})
    with pytest.raises(ResumeStateError, match=r"'.*weights.safetensors' is not a LoRA Lab resume state \(it holds "
                                               r"no LoRA Lab resume metadata\)\. Select the run's \*_state"):
        load_state(tmp_path / "weights.safetensors")


def test_a_kohya_lora_is_named_as_one(tmp_path: Path) -> None:
    from trainer.safetensors_io import write_safetensors_atomic
    write_safetensors_atomic(tmp_path / "lora.safetensors", {"lora_unet_x.lora_down.weight": torch.ones(2, 2)})
    with pytest.raises(ResumeStateError, match=r"is not a LoRA Lab resume state \(it is a LoRA file\)"):
        load_state(tmp_path / "lora.safetensors")


@pytest.mark.parametrize("entry", ["loralab.state.version", "loralab.state.step", "loralab.state.param_names",
                                   "loralab.state.optimizer", "loralab.state.smoothed_loss",
                                   "loralab.state.optimizer_name", "loralab.state.scaler",
                                   "loralab.state.format", "loralab.config_version"])
def test_every_missing_header_entry_is_reported(saved_run: Path, tmp_path: Path, entry: str) -> None:
    path = _altered_copy(saved_run, tmp_path / "partial_state.safetensors", drop=(entry,))
    expected = "its saved training settings are unusable" if entry == "loralab.config_version" else \
        f"it lacks the header entry {entry}"
    with pytest.raises(ResumeStateError, match=rf"Cannot resume from '.*partial_state.safetensors': the file is "
                                               rf"damaged \({expected}"):
        load_state(path, expected_config=config(steps=4))


@pytest.mark.parametrize("tensor", ["history::loss", "rng::generator", "lora::attn.proj_in.lora_down.weight"])
def test_every_missing_tensor_is_reported(saved_run: Path, tmp_path: Path, tensor: str) -> None:
    path = _altered_copy(saved_run, tmp_path / "partial_state.safetensors", drop=(tensor,))
    with pytest.raises(ResumeStateError, match=r"partial_state.safetensors': the file is damaged \(it lacks the "
                                               r"(LoRA )?tensor"):
        load_state(path, expected_config=config(steps=4))


@pytest.mark.parametrize(("metadata", "tensors", "message"), [
    ({"loralab.state.step": "two"}, {}, r"loralab.state.step should be a whole number, it is 'two'"),
    ({"loralab.state.step": "3"}, {}, r"step 3 but 2 loss values"),
    ({"loralab.state.version": "-1"}, {}, r"loralab.state.version is negative"),
    ({"loralab.state.param_names": "[oops"}, {}, r"loralab.state.param_names is not valid JSON"),
    ({"loralab.state.param_names": '{"a": 1}'}, {}, r"param_names should be a list of parameter names"),
    ({"loralab.state.param_names": '["not.a.layer.lora_down.weight"]'}, {},
     r"lacks the LoRA tensor of 1 trained parameters, e.g. 'lora::not.a.layer"),
    ({"loralab.state.optimizer": '{"scalars": {}}'}, {}, r"loralab.state.optimizer lacks its parameter groups"),
    ({"loralab.state.optimizer": '[]'}, {}, r"loralab.state.optimizer should be a JSON object"),
    ({"loralab.state.optimizer_name": "sgd"}, {}, r"optimizer_name is 'sgd', expected one of adamw, adamw8bit"),
    ({"loralab.state.smoothed_loss": '"low"'}, {}, r"smoothed_loss should be a number or null"),
    ({"loralab.state.smoothed_loss": "NaN"}, {}, r"smoothed_loss is nan, not a finite number"),
    ({"loralab.lora.rank": "0"}, {}, r"its saved training settings are unusable: rank = 0 is not allowed"),
    ({}, {"rng::generator": torch.zeros(8)},
     r"rng::generator is torch.float32 \(8,\), a CPU generator's state is uint8"),
    ({}, {"history::loss": torch.zeros(2, 1, dtype=torch.float64)}, r"history::loss has shape \(2, 1\)"),
    ({}, {"optim::attn.proj_in.lora_down.weight::exp_avg": torch.zeros(1)},
     r"optim::attn.proj_in.lora_down.weight::exp_avg has shape \(1,\), its parameter \(4, 16, 1, 1\)"),
    ({}, {"optim::ghost.lora_down.weight::exp_avg": torch.zeros(1)}, r"names 'ghost.lora_down.weight', which is not"),
])
def test_malformed_entries_are_reported(saved_run: Path, tmp_path: Path, metadata: dict[str, str],
                                        tensors: dict[str, torch.Tensor], message: str) -> None:
    path = _altered_copy(saved_run, tmp_path / "bad_state.safetensors", metadata=metadata, tensors=tensors)
    with pytest.raises(ResumeStateError, match=r"Cannot resume from '.*bad_state.safetensors': the file is damaged "
                                               r"\(.*" + message):
        load_state(path, expected_config=config(steps=4))


def test_newer_state_version_asks_to_update(saved_run: Path, tmp_path: Path) -> None:
    path = _altered_copy(saved_run, tmp_path / "future_state.safetensors", metadata={"loralab.state.version": "99"})
    with pytest.raises(ResumeStateError, match=r"future_state.safetensors' was written by a newer LoRA Lab \(state "
                                               r"version 99, this one reads up to 2\); update LoRA Lab"):
        load_state(path)


# --- a state from another run: the file and the differing setting are named -----------------------------------

@pytest.mark.parametrize(("lora", "message"), [
    (LoraShape(rank=8, alpha=4.0, targets="attention_ff_conv"), r"rank: saved 4, now 8\)"),
    (LoraShape(rank=4, alpha=2.0, targets="attention_ff_conv"), r"alpha: saved 4.0, now 2.0\)"),
    (LoraShape(rank=4, alpha=4.0, targets="attention"), r"targets: saved 'attention_ff_conv', now 'attention'\)"),
    (LoraShape(rank=4, alpha=4.0, targets="attention_ff_conv", train_text_encoder=True),
     r"train_text_encoder: saved False, now True\)"),
])
def test_other_lora_settings_are_named(saved_run: Path, lora: LoraShape, message: str) -> None:
    with pytest.raises(ResumeStateError, match=r"The resume state '.*run_state.safetensors' was trained with a "
                                               r"different LoRA shape \(" + message):
        load_state(saved_run, expected_config=config(steps=4, lora=lora))


def test_dropout_may_change_on_resume(saved_run: Path) -> None:
    lora = LoraShape(rank=4, alpha=4.0, targets="attention_ff_conv", dropout=0.1)
    assert load_state(saved_run, expected_config=config(steps=4, lora=lora)).step == 2


def test_other_model_family_is_named(tmp_path: Path) -> None:
    _, result = _train(config(steps=2))
    path = tmp_path / "sdxl_state.safetensors"
    save_state(path, result.state, base_model="sdxl_base_v1-0")
    with pytest.raises(ResumeStateError, match=r"sdxl_state.safetensors' was saved by a run on a sdxl_base_v1-0 "
                                               r"model; the MODEL input now is sd_v1\. Connect the model"):
        load_state(path, expected_config=config(steps=4), expected_base_model="sd_v1")
    assert load_state(path, expected_config=config(steps=4), expected_base_model="sdxl_base_v1-0").step == 2
    save_state(tmp_path / "unrecorded.safetensors", result.state)  # older files: nothing to compare
    assert load_state(tmp_path / "unrecorded.safetensors", expected_base_model="sd_v1").step == 2


def _resume_into(state: TrainState, model: torch.nn.Module, adapters) -> None:
    latents, cond = dataset()
    train(model, adapters, batch_fn(latents, cond, 2), SCHEDULE, config(steps=4), lambda record: None,
          start_state=state)


def test_state_with_other_tensor_shapes_is_refused_before_anything_changes(saved_run: Path) -> None:
    state = load_state(saved_run)
    key = "attn.proj_in.lora_down.weight"
    wrong = TrainState(**{**vars(state), "lora": {**state.lora, key: torch.zeros(3, 16, 1, 1)}})
    model = make_model()
    adapters = attach(model, config(steps=4).lora)
    before = adapters.state_dict()
    with pytest.raises(ResumeStateError, match=r"The resume state '.*run_state.safetensors' does not fit this "
                                               r"run's LoRA: 'attn.proj_in.lora_down.weight' has rank 3 in the "
                                               r"file, this run's rank is 4"):
        _resume_into(wrong, model, adapters)
    assert all(torch.equal(before[k], v) for k, v in adapters.state_dict().items())


def test_state_from_other_layers_is_refused(saved_run: Path) -> None:
    from trainer.training.layer_selection import select_targets
    from trainer.training.trainable_lora import LoraAdapterSet
    state = load_state(saved_run)
    model = make_model()
    adapters = LoraAdapterSet.from_config(config(steps=4).lora, 0)
    adapters.attach(model, [name for name in select_targets(model, "attention_ff_conv") if "proj_in" not in name])
    with pytest.raises(ResumeStateError, match=r"run_state.safetensors' holds 3 LoRA tensors this run does not "
                                               r"train \(e.g. 'attn.proj_in.alpha'\): it was saved by a run on "
                                               r"another model"):
        _resume_into(state, model, adapters)


def test_state_of_another_optimizer_is_refused(saved_run: Path) -> None:
    state = load_state(saved_run)
    model = make_model()
    with pytest.raises(ResumeStateError, match=r"run_state.safetensors' holds adamw8bit optimizer state, but this "
                                               r"run uses adamw"):
        _resume_into(TrainState(**{**vars(state), "optimizer_name": "adamw8bit"}), model,
                     attach(model, config(steps=4).lora))


# --- a failed save leaves the previous files intact and says what the user still has -------------------------

def _fill_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    import trainer.safetensors_io as sio

    class FullDisk:
        def __init__(self, real) -> None:
            self.real = real

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.real.close()

        def write(self, data: bytes) -> int:
            self.real.write(data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

    real_fdopen = os.fdopen
    monkeypatch.setattr(sio.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))


def test_full_disk_while_saving_the_state_keeps_the_previous_pair(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoint order: the LoRA, then the resume state. A state write that fails leaves a usable pair."""
    from trainer.training.export import save_lora
    _, first = _train(config(steps=4), stop_at=2)
    _, later = _train(config(steps=4), stop_at=3)
    state_path, lora_path = tmp_path / "run_state.safetensors", tmp_path / "run-000003.safetensors"
    save_state(state_path, first.state)
    before = state_path.read_bytes()
    save_lora(lora_path, {"x.lora_down.weight": torch.ones(2, 4)}, {"ss_steps": "3"})
    _fill_disk(monkeypatch)
    with pytest.raises(ResumeStateWriteError, match=r"Could not write '.*run_state.safetensors': the disk is full "
                                                    r"\(No space left on device\)\. The previous file at that path is "
                                                    r"unchanged\..* The resume state of step 3 was not saved\. '.*"
                                                    r"run_state.safetensors' still holds the resume state of step 2, "
                                                    r"unchanged: resuming continues from step 2\. LoRA files saved "
                                                    r"before this point are complete") as info:
        save_state(state_path, later.state)
    monkeypatch.undo()
    assert isinstance(info.value, LoraWriteError) and info.value.path == str(state_path)
    assert state_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [lora_path.name, state_path.name], "temp file left"
    assert load_state(state_path, expected_config=config(steps=4)).step == 2
    assert read_safetensors(lora_path)[1]["ss_steps"] == "3"


def test_failed_first_state_save_says_there_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, result = _train(config(steps=2))
    _fill_disk(monkeypatch)
    with pytest.raises(ResumeStateWriteError, match=r"No file was created at that path\..*There is no earlier resume "
                                                    r"state, so this run cannot be resumed until a save succeeds"):
        save_state(tmp_path / "run_state.safetensors", result.state)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_checkpoint_folder_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import trainer.atomic_file as atomic_file
    from trainer.training.export import save_lora
    lora_path = tmp_path / "run.safetensors"
    save_lora(lora_path, {"x.lora_down.weight": torch.ones(2, 4)}, {"ss_steps": "1"})
    before = lora_path.read_bytes()

    def refused(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic_file.tempfile, "mkstemp", refused)  # root ignores chmod, so the refusal is simulated
    with pytest.raises(LoraWriteError, match=rf"Could not write '{lora_path}': the folder '{tmp_path}' is not "
                                             r"writable \(Permission denied\)\. The previous file at that path is "
                                             r"unchanged"):
        save_lora(lora_path, {"x.lora_down.weight": torch.zeros(2, 4)}, {"ss_steps": "2"})
    monkeypatch.undo()
    assert lora_path.read_bytes() == before and list(tmp_path.iterdir()) == [lora_path]
