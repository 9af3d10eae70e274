"""LoRA Lab's command line: runs a workflow's Train LoRA node with ComfyUI imported as a library (no server, no
editor). Start it as `python /path/to/ComfyUI-LoRA-Lab train workflow.json`; see cli/main.py."""
