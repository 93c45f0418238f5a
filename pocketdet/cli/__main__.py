"""`python -m pocketdet.cli ...` (and `torchrun -m pocketdet.cli train ...`)."""
import sys

from . import app

sys.exit(app())
