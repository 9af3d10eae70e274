"""The host adapter: LoRA Lab's node classes, registered under permanent ids. Importing it has no side
effects; the root __init__ registers the routes."""
from .bake_loras import LoraLabBakeLoras
from .dataset import LoraLabDataset
from .extract_lora import LoraLabExtractLora
from .load_lora import LoraLabLoadLora
from .merge_loras import LoraLabMergeLoras
from .option_groups import (
    LoraLabAdapterOptions,
    LoraLabObjectiveOptions,
    LoraLabOptimizerOptions,
    LoraLabRunOptions,
)
from .preview_samples import LoraLabPreviewSamples
from .resize_lora import LoraLabResizeLora
from .stack_loras import LoraLabStackLoras
from .train_lora import LoraLabTrainLora
from .train_options import LoraLabTrainOptions

NODE_CLASS_MAPPINGS = {
    "LoraLabLoadLora": LoraLabLoadLora,
    "LoraLabStackLoras": LoraLabStackLoras,
    "LoraLabDataset": LoraLabDataset,
    "LoraLabTrainLora": LoraLabTrainLora,
    "LoraLabTrainOptions": LoraLabTrainOptions,
    "LoraLabAdapterOptions": LoraLabAdapterOptions,
    "LoraLabOptimizerOptions": LoraLabOptimizerOptions,
    "LoraLabObjectiveOptions": LoraLabObjectiveOptions,
    "LoraLabRunOptions": LoraLabRunOptions,
    "LoraLabPreviewSamples": LoraLabPreviewSamples,
    "LoraLabMergeLoras": LoraLabMergeLoras,
    "LoraLabResizeLora": LoraLabResizeLora,
    "LoraLabExtractLora": LoraLabExtractLora,
    "LoraLabBakeLoras": LoraLabBakeLoras,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LoraLabLoadLora": "Load LoRA (LoRA Lab)",
    "LoraLabStackLoras": "Stack LoRAs (LoRA Lab)",
    "LoraLabDataset": "LoRA Dataset (LoRA Lab)",
    "LoraLabTrainLora": "Train LoRA (LoRA Lab)",
    "LoraLabTrainOptions": "Train LoRA Options (LoRA Lab)",
    "LoraLabAdapterOptions": "Adapter Options (LoRA Lab)",
    "LoraLabOptimizerOptions": "Optimizer Options (LoRA Lab)",
    "LoraLabObjectiveOptions": "Objective Options (LoRA Lab)",
    "LoraLabRunOptions": "Run Options (LoRA Lab)",
    "LoraLabPreviewSamples": "Preview Samples (LoRA Lab)",
    "LoraLabMergeLoras": "Merge LoRAs (LoRA Lab)",
    "LoraLabResizeLora": "Resize LoRA (LoRA Lab)",
    "LoraLabExtractLora": "Extract LoRA (LoRA Lab)",
    "LoraLabBakeLoras": "Bake LoRAs (LoRA Lab)",
}
