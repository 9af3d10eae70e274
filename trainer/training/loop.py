"""The training loop: knows nothing about the model; it calls a denoiser, steps the optimizer, reports by callback.

Call it inside `torch.inference_mode(False)` (hosts such as ComfyUI run nodes in inference mode): the loop
re-enters inference_mode(False) and enable_grad itself, but tensors the caller creates (weights, latents)
must not be inference tensors where autograd has to save them (see trainable_lora.release_inference_tensors).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError, NonFiniteLossError, PeerProcessError
from . import optimizers
from .config import Optimisation, TrainConfig
from .denoising import Batch, BatchFn, Denoiser, as_batch, map_tensors, noisy_inputs, predict
from .distributed import DataParallel, describe_batch
from .ema import AdapterEma
from .losses import LossSettings, training_loss
from .noise import NoiseOptions
from .objective import NoiseSchedule, TimestepSampling, training_schedule
from .resume_checks import check_layers, check_optimizer, check_resumable
from .resume_state import TrainState, optimizer_state_for
from .schedules import lr_multiplier_at
from .trainable_lora import LoraAdapterSet

logger = logging.getLogger(__name__)

SMOOTHING = 0.9  # EMA factor of the smoothed loss shown to the user


@dataclass(frozen=True)
class StepRecord:
    """What one finished update reports; `step` counts finished updates (1..total)."""

    step: int
    total: int
    loss: float
    smoothed_loss: float
    lr: float
    seconds_per_step: float
    grad_norm: float
    timesteps: tuple[int, ...] = ()  # the training timesteps drawn in this update, every micro-batch's


@dataclass(frozen=True)
class TrainResult:
    """How a run ended; `state` can be saved with resume_state.save_state to resume it."""

    steps_completed: int
    total_steps: int
    loss_history: tuple[float, ...]
    smoothed_loss: float | None
    stopped_early: str | None
    optimizer_name: str
    seconds: float
    state: TrainState


# LoRA+ (sd-scripts' loraplus_lr_ratio): the up matrices of each adapter group train in a param group of their own,
# "<group>.lora_up", at the group's learning rate x loraplus_lr_ratio.
LORAPLUS_GROUP_SUFFIX = ".lora_up"


def _base_lr(group_name: str, config: TrainConfig) -> float:
    """The peak learning rate of one param group (the schedule multiplies it by lr_multiplier_at(step))."""
    adapter_group = group_name.removesuffix(LORAPLUS_GROUP_SUFFIX)
    lr = config.optimisation.learning_rate
    if adapter_group == "text_encoder":
        lr = config.lora.text_encoder_lr or lr
    return lr if adapter_group == group_name else lr * config.optimisation.loraplus_lr_ratio


def build_optimizer(adapters: LoraAdapterSet,
                    config: TrainConfig) -> tuple[torch.optim.Optimizer, str, list[list[str]]]:
    """The configured optimizer (optimizers.build_optimizer) with one param group per adapter group, and with
    LoRA+ one more per adapter group for its up matrices.

    Returns the optimizer, the name of the kind actually used (another only with optimizer_fallback on),
    and each group's parameter names.
    """
    names_by_group: dict[str, list[str]] = {}
    params_by_group: dict[str, list[nn.Parameter]] = {}
    for name, param in adapters.named_parameters():
        group = adapters.group_of_parameter(name)
        if config.optimisation.loraplus_lr_ratio > 0 and name.endswith(".lora_up.weight"):
            group += LORAPLUS_GROUP_SUFFIX
        names_by_group.setdefault(group, []).append(name)
        params_by_group.setdefault(group, []).append(param)
    if config.optimisation.loraplus_lr_ratio > 0 and not any(g.endswith(LORAPLUS_GROUP_SUFFIX) for g in names_by_group):
        raise ConfigError(f"loraplus_lr_ratio = {config.optimisation.loraplus_lr_ratio!r} is not allowed with adapter "
                          f"{config.lora.adapter!r}: LoRA+ raises the learning rate of the up matrices (lora_up), "
                          "which only lora and dora adapters have; expected 0 (off), or adapter lora or dora.")
    groups = [{"params": params_by_group[g], "lr": _base_lr(g, config), "base_lr": _base_lr(g, config),
               "group_name": g} for g in sorted(params_by_group)]
    group_names = [names_by_group[g] for g in sorted(names_by_group)]
    optimizer, kind = optimizers.build_optimizer(groups, config.optimisation, adapters.device)
    return optimizer, kind.name, group_names


def _on_copies(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """forward(*args, **kwargs) on copies of the tensors: a block that adds to its input in place (the host's Flux
    blocks do) would otherwise change the inputs checkpoint keeps for the recompute."""
    return forward(*map_tensors(torch.Tensor.clone, args), **map_tensors(torch.Tensor.clone, kwargs))


@contextlib.contextmanager
def gradient_checkpointing(modules: Sequence[nn.Module] | None) -> Iterator[None]:
    """Run each module's forward under torch.utils.checkpoint while inside; restore the forwards on exit.

    The engine cannot know a host model's blocks, so the caller names them (e.g. the UNet's top-level
    blocks). Non-reentrant checkpointing replays the global RNG, so LoRA dropout masks match on recompute.
    """
    patched: list[tuple[nn.Module, Any]] = []
    try:
        for module in modules or ():
            own_forward = module.__dict__.get("forward")  # an instance-level forward the host may have set
            original = module.forward

            def checkpointed(*args: Any, _forward: Callable[..., Any] = original, **kwargs: Any) -> Any:
                return checkpoint(_on_copies, _forward, *args, use_reentrant=False, **kwargs)

            module.forward = checkpointed  # type: ignore[method-assign]
            patched.append((module, own_forward))
        yield
    finally:
        for module, own_forward in reversed(patched):
            if own_forward is None:
                del module.forward
            else:
                module.forward = own_forward  # type: ignore[method-assign]


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _fork_rng(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    return torch.random.fork_rng(devices=[_cuda_index(device)] if device.type == "cuda" else [])


def _seed_global_rng(seed: int, device: torch.device) -> None:
    # Only the CPU generator and the training device's: torch.manual_seed would reseed every GPU.
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[_cuda_index(device)].manual_seed(seed)


def _batch_loss(denoiser: Denoiser, batch: Batch, schedule: NoiseSchedule,
                generator: torch.Generator, device: torch.device, mixed_precision: str,
                noise: NoiseOptions, losses: LossSettings,
                sampling: TimestepSampling | None = None,
                shard: DataParallel | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's loss and the timesteps drawn for it."""
    x_t, target, timesteps = noisy_inputs(batch.latents, schedule, generator, device, noise, sampling)
    share, drawn, cond, mask, weight = 1.0, timesteps, batch.cond, batch.mask, batch.weight
    if shard is not None:  # the draws above are the global batch's; this process computes its items
        x_t, target, timesteps, cond, share = shard.take_shard(x_t, target, timesteps, cond)
        mask, weight = shard.take_items((mask, weight), batch.latents.shape[0])
    prediction = predict(denoiser, x_t, timesteps, cond, device, mixed_precision)
    loss = training_loss(prediction, target, timesteps, schedule, losses, element_weights=mask, sample_weights=weight)
    return loss * share, drawn  # drawn: every process's timesteps


def _accumulate_gradients(denoiser: Denoiser, batches: BatchFn, schedule: NoiseSchedule, opt: Optimisation,
                          generator: torch.Generator, device: torch.device, scaler: torch.amp.GradScaler,
                          step: int, sampling: TimestepSampling,
                          shard: DataParallel | None = None) -> tuple[float, tuple[int, ...]]:
    """Forward and backward over the step's micro-batches; returns the step's loss (mean over them) and the
    timesteps drawn."""
    # One seed per step from the run's generator drives LoRA dropout through the global RNG, inside
    # fork_rng so the host's RNG is untouched; checkpoint recompute replays that same RNG.
    step_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    loss_value = 0.0
    drawn: list[int] = []
    with _fork_rng(device):
        _seed_global_rng(step_seed + (shard.rank if shard is not None else 0), device)  # own dropout per process
        for micro in range(opt.grad_accumulation):
            batch = as_batch(batches(step * opt.grad_accumulation + micro, generator))
            # Divided so the summed gradients equal those of one batch grad_accumulation times larger.
            loss, timesteps = _batch_loss(denoiser, batch, schedule, generator, device, opt.mixed_precision,
                                          NoiseOptions.of(opt), LossSettings.of(opt), sampling, shard=shard)
            loss = loss / opt.grad_accumulation
            drawn.extend(int(t) for t in timesteps)
            micro_loss = loss.item()
            if not math.isfinite(micro_loss) and shard is None:  # sharded: every process raises after the sum
                raise NonFiniteLossError(step + 1, micro_loss * opt.grad_accumulation)
            scaler.scale(loss).backward()
            loss_value += micro_loss
    return loss_value, tuple(drawn)


def _restore(start_state: TrainState, config: TrainConfig, adapters: LoraAdapterSet,
             optimizer: torch.optim.Optimizer, optimizer_name: str, group_names: list[list[str]],
             generator: torch.Generator, scaler: torch.amp.GradScaler,
             ema: AdapterEma | None, world_size: int) -> tuple[int, list[float], float | None]:
    """Load a saved state into the run's objects; returns (step, loss history, smoothed loss) to continue from.

    Every check runs before anything is changed, so a refused state leaves the adapters as they were.
    """
    check_resumable(start_state.config, config, start_state.step, start_state.source,
                    world_sizes=(start_state.world_size, world_size))
    check_layers(start_state, adapters)
    check_optimizer(start_state, optimizer_name)
    optimizer_state = optimizer_state_for(start_state, group_names)
    if ema is not None:  # checks the saved averages before changing them
        ema.load_state_dict(start_state.ema, start_state.source)
    adapters.load_state_dict(start_state.lora)
    optimizer.load_state_dict(optimizer_state)
    for group in optimizer.param_groups:  # the current config's lr wins over the saved one
        group["base_lr"] = _base_lr(group["group_name"], config)
    generator.set_state(start_state.generator_state)
    if scaler.is_enabled() and start_state.scaler_state:
        scaler.load_state_dict(start_state.scaler_state)
    logger.info("resuming at step %d of %d", start_state.step, config.optimisation.steps)
    return start_state.step, list(start_state.loss_history), start_state.smoothed_loss


def _apply_update(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params: list[nn.Parameter],
                  opt: Optimisation, step: int) -> float:
    """Clip, step and clear the accumulated gradients; returns the gradient norm before clipping."""
    scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
    max_norm = opt.max_grad_norm if opt.max_grad_norm > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if not math.isfinite(grad_norm) and not scaler.is_enabled():
        raise NonFiniteLossError(step + 1, grad_norm, "gradient norm")
    scaler.step(optimizer)  # with fp16 an overflowing step is skipped and the scale lowered
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def train(denoiser: Denoiser, adapters: LoraAdapterSet, batches: BatchFn, schedule: NoiseSchedule,
          config: TrainConfig, on_step: Callable[[StepRecord], None],
          should_stop: Callable[[], str | None] | None = None, start_state: TrainState | None = None,
          on_checkpoint: Callable[[TrainState], None] | None = None,
          checkpoint_modules: Sequence[nn.Module] | None = None,
          data_parallel: DataParallel | None = None,
          interruptions: tuple[type[BaseException], ...] = (), ema: AdapterEma | None = None) -> TrainResult:
    """Train `adapters` for config.optimisation.steps updates (continuing from start_state if given).

    should_stop() is polled before every update; a non-empty reason ends the run gracefully. An exception
    of a type in `interruptions` raised inside an update (a host whose layers raise on Cancel) also ends
    it gracefully: that update is discarded and the result holds the state after the last whole one.
    on_checkpoint(state) is called every checkpointing.every_n_steps updates (not after the last one:
    the result carries the final state). Raises NonFiniteLossError without applying the bad update, and
    ResumeStateError (before any work) if start_state cannot continue this run, and OptimizerError if the
    optimizer cannot be built here, and ConfigError if the timestep sampling, loss or zero_terminal_snr setting
    does not fit the schedule. With
    config.ema.enabled the EMA of the weights is updated after each update (`ema`, or one the loop makes from
    the adapters' weights) and saved in the state; pass your own to sample or export it. With a schedule-free
    optimizer the adapters hold its averaged weights (the ones to save and use) during on_step / on_checkpoint
    and after the return; `result.state` holds the training point, from which a resumed run continues.

    With `data_parallel` (torchrun, distributed.py) `batches` returns the global batch (batch_size x
    world_size items) and this process trains its shard of it; every process takes the same update, only
    the main one calls on_step / on_checkpoint, and a lost process ends the run like a stop, with the last
    whole step. Without it (one process) nothing changes.
    """
    opt = config.optimisation
    device = adapters.device
    sampling = TimestepSampling.of(opt)
    sampling.check(schedule)
    schedule = training_schedule(schedule, opt)  # zero_terminal_snr rescales it
    LossSettings.of(opt).check(schedule)
    if data_parallel is not None and config.lora.module_dropout > 0:
        # Each process draws its own skips, so the gradients they sum would belong to different layers.
        raise ConfigError(f"module_dropout = {config.lora.module_dropout!r} is not allowed with "
                          f"{data_parallel.world_size} training processes; expected 0 (off), or train in one process.")
    if not config.ema.enabled:
        ema = None
    elif ema is None:
        ema = AdapterEma(adapters, config.ema)
    generator = torch.Generator("cpu").manual_seed(opt.seed)
    if data_parallel is not None and not data_parallel.is_main:  # the main process reports and writes
        on_step, on_checkpoint = (lambda record: None), None
    optimizer, optimizer_name, group_names = build_optimizer(adapters, config)
    params = adapters.parameters()
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and opt.mixed_precision == "fp16")
    step, history, smoothed = 0, [], None
    world_size = data_parallel.world_size if data_parallel is not None else 1
    if start_state is not None:
        step, history, smoothed = _restore(start_state, config, adapters, optimizer, optimizer_name, group_names,
                                           generator, scaler, ema, world_size)

    def snapshot() -> TrainState:
        return TrainState(step=step, config=config, lora=adapters.state_dict(),
                          optimizer_state=map_tensors(lambda t: t.detach().to("cpu", copy=True),
                                                       optimizer.state_dict()),
                          param_names=[n for names in group_names for n in names],
                          generator_state=generator.get_state(), loss_history=list(history),
                          smoothed_loss=smoothed, optimizer_name=optimizer_name,
                          scaler_state=scaler.state_dict() if scaler.is_enabled() else {},
                          ema=ema.state_dict() if ema is not None else {}, world_size=world_size)

    logger.info("training %d LoRA layers with %s, %s precision, %d steps", len(adapters), optimizer_name,
                opt.mixed_precision if device.type == "cuda" else "fp32 (CPU)", opt.steps)
    logger.info("effective %s", describe_batch(opt, world_size))
    stopped_early: str | None = None
    started = time.perf_counter()
    adapters.train(True)
    # Schedule-free optimizers step at their training point; callbacks and the caller see the averaged weights.
    averaged = optimizers.has_averaged_weights(optimizer)
    if averaged:
        optimizer.train()  # type: ignore[attr-defined]
    try:
        with torch.inference_mode(False), torch.enable_grad(), gradient_checkpointing(checkpoint_modules):
            while step < opt.steps:
                reason = should_stop() if should_stop is not None else None
                if data_parallel is not None:  # every process stops at the same step
                    reason = data_parallel.agree_to_stop(reason)
                if reason:
                    stopped_early = reason
                    logger.info("stopping at step %d: %s", step, reason)
                    break
                step_started = time.perf_counter()
                # lr is a pure function of the step: nothing to save, nothing to drift on resume.
                multiplier = lr_multiplier_at(step, opt)
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * multiplier
                generator_before = generator.get_state()
                try:
                    loss_value, timesteps = _accumulate_gradients(denoiser, batches, schedule, opt, generator,
                                                                  device, scaler, step, sampling, shard=data_parallel)
                    if data_parallel is not None:  # the summed gradients and global loss, on every process
                        loss_value = data_parallel.reduce_step(params, loss_value, step)
                except (*interruptions, PeerProcessError) as e:
                    lost = e.reason if isinstance(e, PeerProcessError) else None
                    if data_parallel is not None and lost is None:
                        lost = data_parallel.abandon_step()  # the others drop this step too, unless they are gone
                    # Nothing was applied yet: rewind the randomness so a resumed run redoes this update.
                    generator.set_state(generator_before)
                    optimizer.zero_grad(set_to_none=True)
                    stopped_early = lost or "interrupted"
                    logger.info("interrupted during step %d (%s); keeping the state of step %d",
                                step + 1, lost or type(e).__name__, step)
                    break
                grad_norm = _apply_update(optimizer, scaler, params, opt, step)
                step += 1
                if ema is not None:  # of the weights a file would hold (schedule-free: its average)
                    with optimizers.averaged_weights(optimizer, params):
                        ema.update(step, adapters)
                history.append(loss_value)
                smoothed = loss_value if smoothed is None else SMOOTHING * smoothed + (1 - SMOOTHING) * loss_value
                record = StepRecord(step=step, total=opt.steps, loss=loss_value, smoothed_loss=smoothed,
                                    lr=opt.learning_rate * multiplier, grad_norm=grad_norm,
                                    seconds_per_step=time.perf_counter() - step_started, timesteps=timesteps)
                with optimizers.averaged_weights(optimizer, params):  # samples and "save now" use these
                    on_step(record)
                every = config.checkpointing.every_n_steps
                if on_checkpoint is not None and every > 0 and step % every == 0 and step < opt.steps:
                    state = snapshot()  # the training weights: a resumed run continues from them
                    with optimizers.averaged_weights(optimizer, params):
                        on_checkpoint(state)
        final_state = snapshot()
    except NonFiniteLossError:
        optimizer.zero_grad(set_to_none=True)  # drop the bad gradients; no parameter was touched
        raise
    finally:
        adapters.train(False)  # dropout off for whatever runs the model next
        if averaged:
            optimizer.eval()  # type: ignore[attr-defined]  # the adapters now hold the weights to save and use
    return TrainResult(steps_completed=step, total_steps=opt.steps, loss_history=tuple(history),
                       smoothed_loss=smoothed, stopped_early=stopped_early, optimizer_name=optimizer_name,
                       seconds=time.perf_counter() - started, state=final_state)
