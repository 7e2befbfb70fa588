"""Test-session settings.

The suite runs as ``pytest -n 2`` on a 2-core machine: one intra-op thread per worker keeps torch's
OpenMP threads from oversubscribing the cores (with 2 workers × 2 threads, spinning threads made
small convolutions 20× slower). Subnormal floats are flushed to zero, as the trainer does.
"""

import torch

torch.set_num_threads(1)
torch.set_flush_denormal(True)
