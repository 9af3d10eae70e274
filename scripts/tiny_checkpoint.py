"""Layers of the small SD1.5-architecture test model that fixture LoRAs target (diffusers and LDM names)."""
from scripts.lora_fixtures import Target

# Level 0 has 320 channels, level 1 has 640; one res block per level (scripts/make_tiny_checkpoint.py).
TINY_TARGETS = (
    Target("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "linear", 320, 320,
           "input_blocks.1.1.transformer_blocks.0.attn1.to_q"),
    Target("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", "linear", 320, 320,
           "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0"),
    Target("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", "linear", 320, 768,
           "input_blocks.1.1.transformer_blocks.0.attn2.to_k"),
    Target("down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2", "linear", 320, 1280,
           "input_blocks.1.1.transformer_blocks.0.ff.net.2"),
    Target("down_blocks.0.attentions.0.proj_in", "conv1x1", 320, 320, "input_blocks.1.1.proj_in"),
    Target("down_blocks.0.resnets.0.conv1", "conv3x3", 320, 320, "input_blocks.1.0.in_layers.2"),
    Target("mid_block.attentions.0.transformer_blocks.0.attn1.to_v", "linear", 640, 640,
           "middle_block.1.transformer_blocks.0.attn1.to_v"),
    Target("up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_k", "linear", 320, 320,
           "output_blocks.3.1.transformer_blocks.0.attn1.to_k"),
    Target("text_model.encoder.layers.0.self_attn.q_proj", "linear", 768, 768, component="te"),
    Target("text_model.encoder.layers.11.mlp.fc1", "linear", 3072, 768, component="te"),
)
