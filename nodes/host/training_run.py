"""One training run inside the host: encode the dataset once, train on the host's own MODEL, save, report."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import torch

import comfy.model_management
import comfy.utils
import folder_paths

from ...trainer.training.resume_state import TrainState, load_state, save_state
from ...trainer.training.config import TrainConfig
from ...trainer.data.images import load_pixels
from ...trainer.data.spec import DatasetSpec
from ...trainer.errors import LoraLabError
from ...trainer.training.export import TrainingSummary, export_lora, kohya_metadata, save_lora
from ...trainer.training.inplace_guard import normalisation_inputs_copied
from ...trainer.jobs import JOBS, Job
from ...trainer.data.latents import EncodedImage, LatentBatches
from ...trainer.lora.file import parse_lora
from ...trainer.training.trainable_lora import LoraAdapterSet, lora_parameter_count, release_inference_tensors, select_targets
from ...trainer.training.loop import NonFiniteLossError, StepRecord, evaluate, train
from ...trainer.training.memory import estimate_training_memory, fits
from . import model as host_model
from .patching import patch_model_and_clip
from .run_files import RunFiles
from .training_samples import SamplePlan, TrainingSamples, preview_of

log = logging.getLogger(__name__)
EVAL_SEED = 1234  # fixed noise and timesteps: losses at different steps are comparable
TEXT_ENCODER_KEY_PREFIX = "text_encoder:"  # keeps CLIP layer keys apart from the UNet's in one adapter set


class TrainingStopped(LoraLabError):
    """The run could not start or did not finish; the message says what was kept."""


@dataclass
class RunResult:
    model: object
    clip: object
    lora_name: str
    loss_history: list[float]
    eval_loss_start: float
    eval_loss_end: float
    validation_loss: float | None
    steps_completed: int
    stopped: str | None = None
    checkpoints: list[str] = field(default_factory=list)


_encoded_cache: dict[tuple, list[EncodedImage]] = {}


def encode_items(items, spec: DatasetSpec, model, clip, vae, contexts: bool) -> list[EncodedImage]:
    """Every image through the host's VAE and, with `contexts`, every caption through its CLIP, once (cached
    per dataset). Without them (the text encoder trains), captions are encoded at every step instead."""
    key = (tuple((i.relative_path, i.caption, i.bucket) for i in items), spec.flip, contexts,
           id(model.model), id(clip), id(vae))
    if key in _encoded_cache:
        return _encoded_cache[key]
    encoded_captions: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    encoded = []
    for item in items:
        pixels = load_pixels(item)[None]
        latent = host_model.encode_pixels(vae, model, pixels)[0]
        flipped = host_model.encode_pixels(vae, model, pixels.flip(2))[0] if spec.flip else None
        if contexts and item.caption not in encoded_captions:
            context, pooled = host_model.encode_caption(clip, item.caption)
            encoded_captions[item.caption] = (context[0], None if pooled is None else pooled[0])
        context, pooled = encoded_captions.get(item.caption, (None, None))
        encoded.append(EncodedImage(latent, flipped, item.caption, context, pooled))
    _encoded_cache.clear()  # one dataset at a time: latents are small, but models come and go
    _encoded_cache[key] = encoded
    return encoded


def check_memory(model, config: TrainConfig, spec: DatasetSpec, trainable_params: int) -> None:
    """Refuses a run that will not fit, before anything is encoded, with the figure and the options that fit."""
    unet = host_model.diffusion_module(model)
    params_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    opt = config.optimisation
    on_gpu = comfy.model_management.get_torch_device().type == "cuda"
    estimate = estimate_training_memory(params_bytes, trainable_params, opt.batch_size, spec.resolution,
                                        gradient_checkpointing=opt.gradient_checkpointing,
                                        mixed_precision=opt.mixed_precision if on_gpu else "no",
                                        optimizer=opt.optimizer, rank=config.lora.rank)
    available = host_model.free_memory_bytes() + model.loaded_size()  # what the model holds already counts
    ok, options = fits(estimate, available)
    if not ok:
        raise TrainingStopped(f"This run needs about {estimate.total_bytes / 2**30:.1f} GiB but "
                              f"{available / 2**30:.1f} GiB are available. Options that fit: "
                              + ("; ".join(options) if options else "a smaller resolution or rank"))


class HostControl:
    """Cancel from the host and stop/save/sample requests from the dashboard, as the loop's should_stop."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.interrupted = False
        self.save_requested = False
        self.sample_requested = False

    def progress(self, bar: comfy.utils.ProgressBar, record: StepRecord, preview=None) -> None:
        try:  # the host's progress hook raises on Cancel; turn that into a graceful stop
            bar.update_absolute(record.step, record.total, preview=preview)
        except comfy.model_management.InterruptProcessingException:
            self.interrupted = True

    def should_stop(self) -> str | None:
        if self.interrupted or comfy.model_management.processing_interrupted():
            self.interrupted = True
            return "cancelled"
        requests = self.job.take_requests()
        self.save_requested = self.save_requested or "save" in requests
        self.sample_requested = self.sample_requested or "sample" in requests
        return "stopped from the dashboard" if "stop" in requests else None


def run_training(model, clip, vae, spec: DatasetSpec, files: RunFiles, config: TrainConfig, resume: bool,
                 node_id: str | None, plan: SamplePlan) -> RunResult:
    opt = config.optimisation
    start_state: TrainState | None = None
    if resume:
        if not os.path.exists(files.resume_path):
            raise TrainingStopped(f"nothing to resume: no saved state for '{files.name}' in {files.folder}. "
                                  "Turn resume off to start a new run.")
        start_state = load_state(files.resume_path, expected_config=config)
    elif os.path.exists(files.lora_path):
        raise TrainingStopped(f"'{files.lora_name}' already exists in {files.folder}; choose another name, "
                              "or turn on resume to continue its run.")

    job_folder = os.path.join(folder_paths.get_output_directory(), "loralab", f"{files.name}-{int(time.time())}")
    job = JOBS.create(files.name, opt.steps, job_folder)
    job.start()
    try:
        return _run(model, clip, vae, spec, files, config, start_state, job, node_id, plan, job_folder)
    except comfy.model_management.InterruptProcessingException:
        raise
    except Exception as e:
        job.finish("error", error=str(e))
        raise


def _run(model, clip, vae, spec, files, config, start_state, job, node_id, plan, job_folder) -> RunResult:
    opt = config.optimisation
    train_items = spec.items
    train_clip = config.lora.train_text_encoder
    # Everything that can refuse the run does so before the dataset is encoded.
    schedule = host_model.noise_schedule_for(model)
    unet = host_model.diffusion_module(model)
    unet_layers = select_targets(unet, config.lora.targets)
    trainable = lora_parameter_count(unet, unet_layers, config.lora.rank)
    name_map: dict[str, str] = {}
    if train_clip:
        text_encoder = host_model.text_encoder_module(clip)
        text_layers = select_targets(text_encoder, config.lora.targets)
        name_map.update(host_model.clip_kohya_names(model, text_layers, TEXT_ENCODER_KEY_PREFIX))
        trainable += lora_parameter_count(text_encoder, text_layers, config.lora.rank)
    check_memory(model, config, spec, trainable)

    encoded = encode_items(train_items + spec.validation_items, spec, model, clip, vae, contexts=not train_clip)
    batches = LatentBatches(train_items, encoded[:len(train_items)], opt.batch_size, opt.seed)
    host_model.load_for_training(model, clip if train_clip else None)
    release_inference_tensors(unet)
    adapters = LoraAdapterSet.from_config(config.lora, opt.seed)
    adapters.attach(unet, unet_layers)
    name_map.update(host_model.unet_kohya_names(model, unet_layers))
    in_place_adders = [unet] if host_model.adds_residuals_in_place(model) else []
    if train_clip:
        in_place_adders.append(text_encoder)  # the host's CLIP adds to its residual in place too
        release_inference_tensors(text_encoder)
        adapters.attach(text_encoder, text_layers, key_prefix=TEXT_ENCODER_KEY_PREFIX, group="text_encoder")
    denoiser = host_model.denoiser_for(model, host_model.caption_encoder_for(clip) if train_clip else None)
    base_version, architecture = host_model.base_model_version(model)
    control = HostControl(job)
    bar = comfy.utils.ProgressBar(opt.steps, node_id=node_id)
    checkpoints: list[str] = []
    started = time.time()

    def metadata(steps_done: int) -> dict[str, str]:
        summary = TrainingSummary(output_name=files.name, num_train_images=len(train_items),
                                  resolution=(spec.resolution, spec.resolution), steps_completed=steps_done,
                                  tag_frequency=spec.tag_frequency(), trigger_phrase=spec.trigger_word,
                                  started_at=started, finished_at=time.time())
        md = kohya_metadata(config, summary, base_version, schedule.prediction_type)
        md["modelspec.architecture"] = architecture
        return md

    def checkpoint(state: TrainState) -> None:
        path = files.checkpoint_path(state.step)
        save_lora(path, export_lora(adapters, name_map), metadata(state.step))
        if config.checkpointing.save_resume_state:
            save_state(files.resume_path, state)
        checkpoints.append(os.path.basename(path))
        job.add_checkpoint(state.step, os.path.basename(path))

    samples = TrainingSamples(plan, model, clip, vae, adapters, job, job_folder)

    def on_step(record: StepRecord) -> None:
        job.record_step(record.step, record.total, record.loss, record.smoothed_loss, record.lr,
                        record.seconds_per_step, host_model.memory_in_use())
        if control.save_requested:  # "save now": a loadable LoRA of this step (resume state comes with checkpoints)
            control.save_requested = False
            save_lora(files.checkpoint_path(record.step), export_lora(adapters, name_map), metadata(record.step))
            checkpoints.append(files.checkpoint_name(record.step))
            job.add_checkpoint(record.step, files.checkpoint_name(record.step))
        strip = None
        if plan.prompts and (plan.due(record.step) or control.sample_requested):
            control.sample_requested = False
            strip = samples.render_or_cancel(record.step)
            control.interrupted = control.interrupted or strip is None
        control.progress(bar, record, preview_of(strip) if strip is not None else None)

    with normalisation_inputs_copied(*in_place_adders):
        try:
            if plan.prompts and plan.every_n_steps > 0 and start_state is None:
                samples.render_or_cancel(0)  # the step-0 baseline: the model before any training
            eval_batches, eval_count = batches.fixed()
            eval_start = evaluate(denoiser, adapters, eval_batches, schedule, EVAL_SEED, eval_count)
            try:
                result = train(denoiser, adapters, batches.batch, schedule, config, on_step,
                               should_stop=control.should_stop, start_state=start_state, on_checkpoint=checkpoint,
                               interruptions=(comfy.model_management.InterruptProcessingException,))
            except NonFiniteLossError as e:
                kept = f" The last good checkpoint is {checkpoints[-1]}." if checkpoints else " No checkpoint was saved yet."
                raise TrainingStopped(str(e) + kept) from e
            eval_end = evaluate(denoiser, adapters, eval_batches, schedule, EVAL_SEED, eval_count)
            validation = None
            if spec.validation_items:
                held_out = LatentBatches(spec.validation_items, encoded[len(train_items):], 1, opt.seed)
                val_batches, val_count = held_out.fixed(len(spec.validation_items))
                validation = evaluate(denoiser, adapters, val_batches, schedule, EVAL_SEED, val_count)
                job.record_validation(result.steps_completed, validation)
        finally:
            adapters.detach()

    if result.stopped_early and result.steps_completed < opt.steps:
        checkpoint(result.state)
        lora_name = files.checkpoint_name(result.steps_completed)
    else:
        save_lora(files.lora_path, export_lora(adapters, name_map), metadata(result.steps_completed))
        lora_name = files.lora_name
        if config.checkpointing.save_resume_state:
            save_state(files.resume_path, result.state)
    if control.interrupted or result.stopped_early == "interrupted":
        message = (f"Training '{files.name}' was cancelled at step {result.steps_completed} of {opt.steps}; "
                   f"saved {lora_name} and its resume state. Queue again with resume on to continue.")
        log.warning("LoRA Lab: %s", message)
        job.finish("interrupted", error=message, lora_name=lora_name)
        raise comfy.model_management.InterruptProcessingException()
    job.finish("stopped" if result.stopped_early else "done", lora_name=lora_name)

    trained = parse_lora(export_lora(adapters, name_map, dtype=torch.float32), {}, source_name=lora_name)
    new_model, new_clip, _ = patch_model_and_clip(model, clip, trained, 1.0, 1.0)
    return RunResult(new_model, new_clip, lora_name, list(result.loss_history), eval_start, eval_end,
                     validation, result.steps_completed, result.stopped_early, checkpoints)
