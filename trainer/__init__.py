"""LoRA Lab's engine: reading LoRA files, the adapter algorithms, the dataset and training.

Layering rule: nothing under `trainer/` imports the host (`comfy*`, `folder_paths`, `server`, `nodes`,
`execution`). It receives plain `nn.Module`s, tensors, callables and frozen configs, and reports through
callbacks, so it runs the same inside ComfyUI, headless, or in a unit test. `tests/unit/test_layering.py`
enforces this.

    lora/       reading LoRA files: key grammar, formats, mapping to the host's names, info, stacks
    adapters/   the adapter algorithms (LoRA, LoHa, LoKr, full diff, DoRA), one per file
    data/       dataset scan, images, aspect buckets, latent batches
    training/   config, loop, objective, schedules, trainable adapters, resume state, export, memory
    (top)       errors, safetensors I/O, the job registry, the sample grid
"""
