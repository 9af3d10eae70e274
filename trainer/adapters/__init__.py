"""The adapter algorithms (LoRA, LoHa, LoKr, full diff, DoRA): their tensors, shapes and weight deltas."""
