"""``python -m pdeaccel`` (what torchrun starts: ``torchrun --nproc_per_node=N -m pdeaccel train ...``)."""

import sys

from .cli import main

sys.exit(main())
