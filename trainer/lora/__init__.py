"""Reading existing LoRA files: key grammar, formats, mapping to the host's names, info and stacks. No training."""
