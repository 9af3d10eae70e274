"""`python /path/to/ComfyUI-LoRA-Lab train workflow.json`: LoRA Lab's command line (cli/main.py).

The host never runs this file; it imports __init__.py. Python puts this folder first on sys.path, where the
pack's `nodes/` package would shadow the host's `nodes` module: cli.host takes it off before importing ComfyUI.
"""
import sys

from cli.main import main

if __name__ == "__main__":
    sys.exit(main())
