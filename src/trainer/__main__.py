"""`python -m trainer ...`: the command line (trainer.cli) as a module."""

import sys

from trainer.cli import main

# The guard matters where a library starts worker processes with `spawn` (vLLM can): each worker
# imports this module again, as __mp_main__, and must not rerun the stage.
if __name__ == "__main__":
    sys.exit(main())
