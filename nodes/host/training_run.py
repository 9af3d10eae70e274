"""One training run inside the host, phase by phase: prepare, encode, attach, baseline, train, save, evaluate, finish.

Whatever ends a run early (Cancel, Stop & save, an error) ends it the same way from any phase: the last whole
step is kept (LoRA + resume state) when at least one step was done, the job ends in a terminal state whose
message says what was kept, and the host's MODEL and CLIP are left without LoRA hooks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field

import comfy.model_management
import comfy.utils
import folder_paths
import torch

from ...trainer.data.latents import LatentBatches
from ...trainer.data.spec import DatasetSpec
from ...trainer.errors import RunHalted, TrainingStopped
from ...trainer.jobs import Job
from ...trainer.lora.file import parse_lora
from ...trainer.training.checkpoint_pruning import checkpoints_to_delete
from ...trainer.training.config import Evaluation, TrainConfig
from ...trainer.training.conv_layout import channels_last_kernels
from ...trainer.training.distributed import DataParallel
from ...trainer.training.ema import AdapterEma
from ...trainer.training.evaluation import evaluate
from ...trainer.training.export import TrainingSummary, export_lora, kohya_metadata
from ...trainer.training.inplace_guard import normalisation_inputs_copied
from ...trainer.training.layer_selection import select_layers
from ...trainer.training.loop import NonFiniteLossError, StepRecord, TrainResult, train
from ...trainer.training.objective import TimestepSampling
from ...trainer.training.optimizers import check_optimizer
from ...trainer.training.resume_state import TrainState, load_state, save_state
from ...trainer.training.trainable_lora import LoraAdapterSet, adapter_parameter_count, release_inference_tensors
from . import model as host_model
from .distributed_run import plan_for, process_group, shared_encoding, world_size
from .encoded_dataset import encode_dataset, training_batches
from .host_compat import training_mode
from .jobs import JOBS
from .memory_check import check_memory
from .patching import patch_model_and_clip
from .run_control import CANCELLED, RunControl
from .run_files import RunFiles
from .run_outputs import delete_lora_files, ema_file_name, save_lora_files
from .training_samples import SamplePlan, TrainingSamples, preview_of
from .weight_loading import load_for_training

log = logging.getLogger(__name__)
EVAL_SEED = 1234  # fixed noise and timesteps: losses at different steps are comparable
EVAL_BATCH = 4  # images per evaluation pass (one pass reads the model's weights once for all of them)
TEXT_ENCODER_KEY_PREFIX = "text_encoder:"  # keeps CLIP layer keys apart from the UNet's in one adapter set


@dataclass(frozen=True)
class HostParts:
    """The graph's MODEL (a ModelPatcher), CLIP and VAE, as the host passes them to the node."""
    model: object
    clip: object
    vae: object


@dataclass
class RunResult:
    model: object
    clip: object
    lora_name: str
    loss_history: list[float]
    eval_loss_start: float | None  # None: not measured (eval_images off)
    eval_loss_end: float | None
    validation_loss: float | None
    steps_completed: int
    stopped: str | None = None
    checkpoints: list[str] = field(default_factory=list)


def run_training(model, clip, vae, spec: DatasetSpec, files: RunFiles, config: TrainConfig, resume: bool,
                 node_id: str | None, plan: SamplePlan, evaluation: Evaluation) -> RunResult:
    """Trains a LoRA on the graph's own MODEL (and CLIP), saves it into the loras folder, returns the patched pair."""
    config = dataclasses.replace(config, data=spec.options)  # the dataset's options: recorded, checked on resume
    start_state = _start_state(files, config, resume, host_model.base_model_version(model)[0])
    root = os.path.join(folder_paths.get_output_directory(), "loralab")
    os.makedirs(root, exist_ok=True)
    job_folder = tempfile.mkdtemp(prefix=f"{files.name}-{int(time.time())}-", dir=root)  # own folder per run
    job = JOBS.create(files.name, config.optimisation.steps, job_folder, node_id=node_id)
    group = process_group()  # torchrun from the command line: this process's share of the job
    job.set_batch(config.optimisation.batch_size, config.optimisation.grad_accumulation, world_size(group))
    job.set_timestep_sampling(config.optimisation.timestep_sampling)
    job.start()
    return TrainingRun(HostParts(model, clip, vae), spec, files, config, plan_for(group, plan), job, node_id,
                       start_state, group, evaluation=evaluation).run()


def _start_state(files: RunFiles, config: TrainConfig, resume: bool, base_version: str) -> TrainState | None:
    if resume:
        if not os.path.exists(files.resume_path):
            raise TrainingStopped(f"nothing to resume: no saved state for '{files.name}' in {files.folder}. "
                                  "Turn resume off to start a new run.")
        return load_state(files.resume_path, expected_config=config, expected_base_model=base_version)
    if os.path.exists(files.lora_path):
        raise TrainingStopped(f"'{files.lora_name}' already exists in {files.folder}; choose another name, "
                              "or turn on resume to continue its run.")
    return None


class TrainingRun:
    """The phases of one run, each a method; `run` calls them in order and ends the job whatever happens."""

    def __init__(self, host: HostParts, spec: DatasetSpec, files: RunFiles, config: TrainConfig, plan: SamplePlan,
                 job: Job, node_id: str | None, start_state: TrainState | None,
                 group: DataParallel | None = None, *, evaluation: Evaluation) -> None:
        self.host, self.spec, self.files, self.config, self.plan = host, spec, files, config, plan
        self.job, self.node_id, self.start_state = job, node_id, start_state
        self.evaluation = evaluation
        self.group = group  # several processes (distributed_run.py): only the main one writes files
        self.control = RunControl(job)
        self.adapters = LoraAdapterSet.from_config(config.lora, config.optimisation.seed,
                                                   weight_reader=host_model.layer_weight)
        self.name_map: dict[str, str] = {}
        self.checkpoints: list[str] = []
        self.in_place_adders: list[torch.nn.Module] = []
        self.result: TrainResult | None = None
        self.ema: AdapterEma | None = None
        self.saved: str | None = None  # the file that holds the run's last whole step, once written
        self.saved_step: int | None = None
        self.started = time.time()

    @property
    def train_clip(self) -> bool:
        return self.config.lora.train_text_encoder

    @property
    def steps_done(self) -> int:
        if self.result is not None:
            return self.result.steps_completed
        return self.start_state.step if self.start_state is not None else 0

    def run(self) -> RunResult:
        try:
            self.prepare()
            self.encode()
            try:
                self.attach()
                with normalisation_inputs_copied(*self.in_place_adders), \
                        channels_last_kernels(self.unet, self.adapters.device, self.steps_to_run):
                    self.baseline()
                    self.train()
                    self.save()  # before any evaluation: a Cancel there loses nothing
                    self.evaluate()
            finally:
                self.adapters.detach()
            return self.finish()
        except RunHalted as halt:
            self.end_halted(halt.reason)
        except comfy.model_management.InterruptProcessingException:
            self.end_halted(CANCELLED)
        except BaseException as e:
            self.job.finish("error", error=str(e) or type(e).__name__, lora_name=self.saved)
            raise
        raise comfy.model_management.InterruptProcessingException()  # the prompt ends as interrupted

    # --- phases ----------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Everything that can refuse the run does so here, before the dataset is encoded."""
        self.job.set_phase("preparing")
        model, clip = self.host.model, self.host.clip
        self.schedule = host_model.noise_schedule_for(model)
        self.unet = host_model.diffusion_module(model)
        models = {"diffusion model": self.unet}
        if self.train_clip:
            self.text_encoder = models["text encoder"] = host_model.text_encoder_module(clip)
        layers = select_layers(models, self.config.lora)  # include/exclude patterns may match in either model
        self.unet_layers = layers["diffusion model"]
        trainable = adapter_parameter_count(self.unet, self.unet_layers, self.config.lora)
        if self.train_clip:
            self.text_layers = layers["text encoder"]
            self.name_map.update(host_model.clip_kohya_names(model, self.text_layers, TEXT_ENCODER_KEY_PREFIX))
            trainable += adapter_parameter_count(self.text_encoder, self.text_layers, self.config.lora)
        frames = max(item.frame_count for item in self.spec.items)
        self.config, plan = check_memory(self.host.model, self.config, self.spec.resolution, trainable,
                                         [(self.unet, self.unet_layers)] + ([(self.text_encoder, self.text_layers)]
                                                                            if self.train_clip else []),
                                         latent_frames=host_model.latent_frames(self.host.vae, frames))
        log.info("LoRA Lab memory: %s", plan.description)
        self.job.set_memory_plan(plan.description)
        TimestepSampling.of(self.config.optimisation).check(self.schedule)  # e.g. sigmoid on an epsilon model
        self.optimizer_name = check_optimizer(self.config.optimisation, comfy.model_management.get_torch_device())
        self.base_version, self.architecture = host_model.base_model_version(model)

    def encode(self) -> None:
        items = self.spec.items + self.spec.validation_items + self.spec.class_items

        def before_each(index: int, count: int) -> None:
            self.job.set_phase("encoding", f"{index + 1}/{count}")
            self.control.check()

        with self.control.host_work():
            encoded = shared_encoding(self.group, items, lambda: encode_dataset(
                items, self.spec, self.host.model, self.host.clip, self.host.vae, contexts=not self.train_clip,
                before_each=before_each))
        train_count, held_out = len(self.spec.items), len(self.spec.validation_items)
        # With several processes the loop is given the global batch and trains this process's shard of it.
        global_batch = self.config.optimisation.batch_size * world_size(self.group)
        self.batches = training_batches(self.spec, encoded[:train_count], encoded[train_count + held_out:],
                                        global_batch, self.config.optimisation.seed,
                                        None if self.train_clip else self.host.clip)
        self.validation_encoded = encoded[train_count:train_count + held_out]

    def load_model(self) -> None:
        """Loads the model as the memory plan says (fully, or partly offloaded); again after each sample, which the
        host's sampler loads its own way. A CLIP that encodes at every step (it trains, or the captions vary) stays
        loaded beside the model: loading it on demand could offload the model being trained."""
        encodes_each_step = self.train_clip or self.spec.options.varies_captions
        loaded = load_for_training(self.host.model, self.host.clip if encodes_each_step else None,
                                   self.config.optimisation.offload_fraction)
        self.job.set_weights_on_device(loaded.on_device_bytes, loaded.total_bytes)

    def attach(self) -> None:
        model, clip = self.host.model, self.host.clip
        self.load_model()
        release_inference_tensors(self.unet)
        self.adapters.attach(self.unet, self.unet_layers)
        self.name_map.update(host_model.unet_kohya_names(model, self.unet_layers))
        self.in_place_adders = [self.unet] if host_model.adds_residuals_in_place(model) else []
        if self.train_clip:
            self.in_place_adders.append(self.text_encoder)  # the host's CLIP adds to its residual in place too
            release_inference_tensors(self.text_encoder)
            self.adapters.attach(self.text_encoder, self.text_layers, key_prefix=TEXT_ENCODER_KEY_PREFIX,
                                 group="text_encoder")
        if self.config.ema.enabled:  # from the untrained weights; a resumed run's saved EMA replaces them
            self.ema = AdapterEma(self.adapters, self.config.ema)
        self.denoiser = host_model.denoiser_for(model,
                                                host_model.caption_encoder_for(clip) if self.train_clip else None)
        self.samples = TrainingSamples(self.plan, model, clip, self.host.vae, self.adapters, self.job, self.job.folder)
        self.eval_batches, self.eval_count = self.batches.fixed(self.evaluation.image_count)

    def baseline(self) -> None:
        """The step-0 sample (the model before any training) and the loss at fixed noise before training."""
        if self.plan.prompts and self.plan.every_n_steps > 0 and self.start_state is None:
            self.job.set_phase("sampling", "step 0")
            with self.control.host_work():
                self.samples.render(0, before_each=self.control.check)
            self.load_model()
        self.eval_start = None
        if self.eval_count:
            self.job.set_phase("evaluating", "before training")
            with self.control.host_work():
                self.eval_start = self.evaluate_loss(self.eval_batches, self.eval_count)

    def train(self) -> None:
        self.control.check()
        self.job.set_phase("training")
        self.progress_bar = comfy.utils.ProgressBar(self.config.optimisation.steps, node_id=self.node_id)
        try:
            with training_mode():  # (0.33: the host's differentiable paths; samples run outside it)
                self.result = train(self.denoiser, self.adapters, self.batches.batch, self.schedule, self.config,
                                    self.on_step, should_stop=self.control.should_stop, start_state=self.start_state,
                                    on_checkpoint=self.on_checkpoint, data_parallel=self.group,
                                    checkpoint_modules=host_model.checkpoint_blocks(self.host.model)
                                    if self.config.optimisation.gradient_checkpointing else None,
                                    interruptions=(comfy.model_management.InterruptProcessingException,), ema=self.ema)
        except NonFiniteLossError as e:
            kept = (f" The last good checkpoint is {self.checkpoints[-1]}." if self.checkpoints
                    else " No checkpoint was saved yet.")
            raise TrainingStopped(str(e) + kept) from e
        if self.result.stopped_early == "interrupted":  # the host's Cancel inside a step: that step was discarded
            self.control.halt(CANCELLED)
        elif self.result.stopped_early:  # e.g. another process's stop, or a lost process: the run's reason too
            self.control.halt(self.result.stopped_early)
        self.control.steps_over = True

    def save(self) -> None:
        """The final LoRA, or on an early end a checkpoint of the last whole step; with its resume state."""
        assert self.result is not None
        step = self.result.steps_completed
        if step == self.steps_before_run or step == self.saved_step:
            return  # nothing new to keep
        self.job.set_phase("saving")
        self.write_files(step, self.result.state, final=step >= self.config.optimisation.steps)

    def evaluate(self) -> None:
        assert self.result is not None
        with self.control.host_work():
            self.eval_end = None
            if self.eval_count:
                self.job.set_phase("evaluating", "after training")
                self.eval_end = self.evaluate_loss(self.eval_batches, self.eval_count)
            self.validation = None
            if self.spec.validation_items:
                self.job.set_phase("validating")
                held_out = LatentBatches(self.spec.validation_items, self.validation_encoded, 1,
                                         self.config.optimisation.seed)
                batches, count = held_out.fixed(len(self.spec.validation_items))
                self.validation = self.evaluate_loss(batches, count)
                self.job.record_validation(self.result.steps_completed, self.validation)

    def finish(self) -> RunResult:
        assert self.result is not None and self.saved is not None
        stopped = self.control.halted or self.result.stopped_early
        self.job.finish("stopped" if stopped else "done", lora_name=self.saved)
        lora_name = self.saved
        use_ema = self.ema is not None and self.config.ema.for_final
        with self.ema.applied(self.adapters) if use_ema else contextlib.nullcontext():
            if use_ema:
                lora_name = ema_file_name(self.saved)
            trained = parse_lora(export_lora(self.adapters, self.name_map, dtype=torch.float32), {},
                                 source_name=lora_name)
        new_model, new_clip, _ = patch_model_and_clip(self.host.model, self.host.clip, trained, 1.0, 1.0)
        return RunResult(new_model, new_clip, lora_name, list(self.result.loss_history), self.eval_start,
                         self.eval_end, self.validation, self.result.steps_completed, stopped, self.checkpoints)

    def end_halted(self, reason: str) -> None:
        """Ends the job of a run halted in any phase, keeping its last whole step; says what was kept."""
        self.control.halt(reason)
        phase = self.control.halted_while
        if self.result is not None:
            self.save()
        total = self.config.optimisation.steps
        head = f"Training '{self.files.name}' was {reason} at step {self.steps_done} of {total}"
        head += f" (while {phase})" if phase and phase != "training" else ""
        if self.saved is not None:
            kept = f"; saved {self.saved}" + (" and its resume state" if self.keeps_resume_state else "")
            kept += "." if self.steps_done >= total else ". Queue again with resume on to continue."
        elif self.start_state is not None:
            kept = f"; no new step was done, the saved state of step {self.start_state.step} is unchanged."
        else:
            kept = "; no step had finished, so nothing was saved."
        message = head + kept
        log.warning("LoRA Lab: %s", message)
        self.job.finish("interrupted" if reason == CANCELLED else "stopped", error=message, lora_name=self.saved)

    # --- helpers ---------------------------------------------------------------------------------
    @property
    def steps_before_run(self) -> int:
        return self.start_state.step if self.start_state is not None else 0

    @property
    def steps_to_run(self) -> int:
        return self.config.optimisation.steps - self.steps_before_run

    @property
    def keeps_resume_state(self) -> bool:
        return self.config.checkpointing.save_resume_state

    def evaluate_loss(self, batches, count: int) -> float:
        with training_mode():  # the training step's paths (0.33's fused INT8 inference path would skip a LoRA)
            return evaluate(self.denoiser, self.adapters, batches, self.schedule, EVAL_SEED, count,
                            max_batch=self.evaluation_batch)

    @property
    def evaluation_batch(self) -> int:
        """Images per evaluation pass: EVAL_BATCH, or the training batch if larger; only the training batch when
        gradient checkpointing is on (memory is then short on purpose)."""
        opt = self.config.optimisation
        return opt.batch_size if opt.gradient_checkpointing else max(opt.batch_size, EVAL_BATCH)

    def metadata(self, steps_done: int) -> dict[str, str]:
        summary = TrainingSummary(output_name=self.files.name, num_train_images=len(self.spec.items),
                                  resolution=(self.spec.resolution, self.spec.resolution), steps_completed=steps_done,
                                  tag_frequency=self.spec.tag_frequency(), trigger_phrase=self.spec.trigger_word,
                                  started_at=self.started, finished_at=time.time(), world_size=world_size(self.group))
        md = kohya_metadata(self.config, summary, self.base_version, self.schedule.prediction_type,
                            optimizer_name=self.optimizer_name)
        md["modelspec.architecture"] = self.architecture
        md.update(self.spec.kohya_metadata())  # class images and data options, as sd-scripts names them
        return md

    def write_files(self, step: int, state: TrainState | None, final: bool) -> None:
        """The one writer of a run's files: the LoRA of `step` (final or a step checkpoint), then its resume state."""
        path = self.files.lora_path if final else self.files.checkpoint_path(step)
        name = os.path.basename(path)
        if self.group is not None and not self.group.is_main:  # the main process writes the same files
            self.saved, self.saved_step = name, step
            return
        save_lora_files(path, self.adapters, self.name_map, self.metadata(step), self.ema)
        if state is not None and self.keeps_resume_state:
            save_state(self.files.resume_path, state, base_model=self.base_version)
        if not final:
            self.checkpoints.append(name)
            self.job.add_checkpoint(step, name)
            self.prune_checkpoints()
        if state is not None:
            self.saved, self.saved_step = name, step

    def prune_checkpoints(self) -> None:
        """Deletes this run's step checkpoints beyond the newest keep_last (never the final file, never the
        checkpoint that holds the resume state's step: it is the newest)."""
        for old in checkpoints_to_delete(self.checkpoints, self.config.checkpointing.keep_last):
            delete_lora_files(self.files.folder, old)
            self.checkpoints = [c for c in self.checkpoints if c != old]
            self.job.remove_checkpoint(old)

    def on_checkpoint(self, state: TrainState) -> None:
        self.write_files(state.step, state, final=False)

    def on_step(self, record: StepRecord) -> None:
        self.job.record_timesteps(record.timesteps, self.schedule.num_timesteps)  # published with the step
        self.job.record_step(record.step, record.total, record.loss, record.smoothed_loss, record.lr,
                             record.seconds_per_step, host_model.memory_in_use())
        # "save now": a loadable LoRA of this step (resume state comes with checkpoints)
        if self.control.save_requested:
            self.control.save_requested = False
            self.write_files(record.step, None, final=False)
        strip = None
        if self.plan.prompts and (self.plan.due(record.step) or self.control.sample_requested):
            self.control.sample_requested = False
            self.job.set_phase("sampling", f"step {record.step}")
            use_ema = self.ema is not None and self.config.ema.for_samples
            try:
                with training_mode(enabled=False), \
                        self.ema.applied(self.adapters) if use_ema else contextlib.nullcontext():
                    strip = self.samples.render(record.step, before_each=self.control.check)
            except RunHalted:
                pass  # the loop sees control.halted before its next update
            except comfy.model_management.InterruptProcessingException as e:
                self.control.interrupted_by_host(e)
            self.load_model()
            self.job.set_phase("training")
        try:  # the host's progress hook raises on Cancel; the loop stops before its next update
            self.progress_bar.update_absolute(record.step, record.total,
                                              preview=preview_of(strip) if strip is not None else None)
        except comfy.model_management.InterruptProcessingException as e:
            self.control.interrupted_by_host(e)
