"""python -m comfy_sdnq: the command line (see comfy_sdnq.cli)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
