"""The host adapter: LoRA Lab's node classes, registered under permanent ids."""
from .load_lora import LoraLabLoadLora
from .stack_loras import LoraLabStackLoras

NODE_CLASS_MAPPINGS = {
    "LoraLabLoadLora": LoraLabLoadLora,
    "LoraLabStackLoras": LoraLabStackLoras,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LoraLabLoadLora": "Load LoRA (LoRA Lab)",
    "LoraLabStackLoras": "Stack LoRAs (LoRA Lab)",
}
