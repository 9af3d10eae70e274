"""The host-facing helpers the node classes share: model/CLIP/VAE access, LoRA files, patching, sampling,
run files, the training run and the routes. Everything here may import the host."""
