"""`python -m gpt2kit` (and `torchrun -m gpt2kit finetune ...`)."""

import sys

from .cli import main

sys.exit(main())
