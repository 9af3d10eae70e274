"""Training a LoRA: config, loop, objective, schedules, trainable adapters, resume state, export, memory."""
