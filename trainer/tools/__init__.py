"""LoRA tools: merge several LoRAs into one, resize one to a smaller rank (low-rank SVD, layer by layer)."""
