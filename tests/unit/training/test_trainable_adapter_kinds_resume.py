"""Each adapter kind through the training loop: resume is bit-exact with rank and module dropout on, checkpoint
recompute replays the dropouts, and the file's metadata names the network as sd-scripts / LyCORIS write it."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import torch

from tests.support.tiny_models import attach, batch_fn, config, dataset, make_model
from trainer.errors import ConfigError
from trainer.training.config import LoraShape, TrainConfig
from trainer.training.distributed import DataParallel
from trainer.training.export import TrainingSummary, kohya_metadata
from trainer.training.loop import StepRecord, TrainResult, train
from trainer.training.objective import NoiseSchedule
from trainer.training.resume_state import TrainState, load_state, save_state

SCHEDULE = NoiseSchedule.scaled_linear()
# rank 1 on the tiny model's 16-wide layers: LoKr decomposes w2 (1 < 4 / 2), with Tucker cores on its 3x3 convs.
DROPOUTS = {"dropout": 0.1, "rank_dropout": 0.3, "module_dropout": 0.3}
SHAPES = {
    "lora": LoraShape(rank=2, alpha=1.0, targets="attention_ff_conv", **DROPOUTS),
    "loha": LoraShape(rank=1, alpha=1.0, targets="attention_ff_conv", adapter="loha", use_tucker=True, **DROPOUTS),
    "lokr": LoraShape(rank=1, alpha=1.0, targets="attention_ff_conv", adapter="lokr", use_tucker=True, **DROPOUTS),
    # rank 2: both factors full on the 16 x 16 layers (2 is not below 4 / 2), w2 decomposed on the 16 x 32 ones
    "lokr_full": LoraShape(rank=2, alpha=1.0, targets="attention_ff_conv", adapter="lokr", **DROPOUTS),
    "dora": LoraShape(rank=2, alpha=1.0, targets="attention_ff_conv", adapter="dora", **DROPOUTS),
}


def _config(shape: LoraShape) -> TrainConfig:
    return config(steps=6, lora=shape, grad_accumulation=2, schedule="cosine", warmup_steps=1)


def _train(cfg: TrainConfig, stop_at: int | None = None, start: TrainState | None = None, init_seed: int | None = None,
           checkpointed: bool = False) -> tuple[dict[str, torch.Tensor], TrainResult]:
    model = make_model()
    adapters = attach(model, cfg.lora, seed=cfg.optimisation.seed if init_seed is None else init_seed)
    latents, cond = dataset()
    records: list[StepRecord] = []
    stop = (lambda: "stop" if records and records[-1].step >= stop_at else None) if stop_at else None
    blocks = [model.res, model.attn.transformer_blocks[0]] if checkpointed else None
    result = train(model, adapters, batch_fn(latents, cond, 2), SCHEDULE, cfg, records.append, should_stop=stop,
                   start_state=start, checkpoint_modules=blocks)
    return adapters.state_dict(), result


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_resume_with_each_kind_and_the_dropouts_equals_uninterrupted(name: str, tmp_path: Path) -> None:
    cfg = _config(SHAPES[name])
    full, full_result = _train(cfg)
    _, first = _train(cfg, stop_at=3)
    save_state(tmp_path / "state.safetensors", first.state)
    resumed, resumed_result = _train(cfg, start=load_state(tmp_path / "state.safetensors", expected_config=cfg),
                                     init_seed=1234)  # another init: everything must come from the state
    assert resumed_result.loss_history == full_result.loss_history
    assert set(resumed) == set(full)
    for key, value in full.items():
        assert torch.equal(resumed[key], value), key
    untrained, _ = _train(config(steps=1, learning_rate=1e-12, lora=SHAPES[name]))
    assert any(not torch.equal(full[k], untrained[k]) for k in full if not k.endswith(".alpha"))


@pytest.mark.parametrize("name", ["lora", "loha", "dora"])
def test_checkpoint_recompute_replays_the_dropouts(name: str) -> None:
    cfg = _config(SHAPES[name])
    plain, plain_result = _train(cfg)
    checkpointed, checkpointed_result = _train(cfg, checkpointed=True)
    assert checkpointed_result.loss_history == plain_result.loss_history
    for key, value in plain.items():
        torch.testing.assert_close(checkpointed[key], value, rtol=0, atol=1e-6)


def test_the_dropouts_change_the_training() -> None:
    without = {k: v for k, v in vars(SHAPES["loha"]).items() if k not in DROPOUTS}
    _, plain = _train(_config(LoraShape(**without)))
    _, dropped = _train(_config(SHAPES["loha"]))
    assert plain.loss_history != dropped.loss_history


def test_module_dropout_is_refused_with_several_processes_before_any_work() -> None:
    """Each process would skip other layers; the summed gradients of different layers crash the collective."""
    cfg = _config(SHAPES["lora"])
    model = make_model()
    adapters = attach(model, cfg.lora)
    latents, cond = dataset()
    before = adapters.state_dict()
    with pytest.raises(ConfigError, match=r"module_dropout = 0.3 is not allowed with 2 training processes; expected "
                                          r"0 \(off\), or train in one process"):
        train(model, adapters, batch_fn(latents, cond, 2), SCHEDULE, cfg, lambda record: None,
              data_parallel=DataParallel(rank=0, world_size=2, device=torch.device("cpu")))
    assert all(torch.equal(v, adapters.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(("shape", "module", "args"), [
    (LoraShape(rank=4, alpha=2.0), "networks.lora", {}),
    (LoraShape(rank=4, alpha=2.0, targets="attention_ff_conv", rank_dropout=0.1, module_dropout=0.2), "networks.lora",
     {"conv_dim": "4", "conv_alpha": "2.0", "rank_dropout": "0.1", "module_dropout": "0.2"}),
    (LoraShape(rank=4, alpha=2.0, adapter="loha", targets="attention_ff_conv", use_tucker=True), "lycoris.kohya",
     {"algo": "loha", "conv_dim": "4", "conv_alpha": "2.0", "use_tucker": "True"}),
    (LoraShape(rank=4, alpha=2.0, adapter="lokr", lokr_factor=8), "lycoris.kohya", {"algo": "lokr", "factor": "8"}),
    (LoraShape(rank=4, alpha=2.0, adapter="dora"), "lycoris.kohya",
     {"algo": "lora", "dora_wd": "True", "wd_on_output": "False"}),
])
def test_metadata_names_the_network_as_sd_scripts_and_lycoris(shape: LoraShape, module: str,
                                                               args: dict[str, str]) -> None:
    cfg = config(lora=shape)
    summary = TrainingSummary(output_name="run", num_train_images=4, resolution=(64, 64), steps_completed=6)
    metadata = kohya_metadata(cfg, summary, "sd_v1", now=datetime.datetime(2026, 1, 1))
    assert metadata["ss_network_module"] == module
    assert json.loads(metadata["ss_network_args"]) == args
    assert TrainConfig.from_metadata(metadata).lora == shape
