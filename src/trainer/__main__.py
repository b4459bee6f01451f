"""`python -m trainer ...`: the command line (trainer.cli) as a module."""

import sys

from trainer.cli import main

sys.exit(main())
