"""The Ray Tune search over the fine-tuning space: its params, trials (one process or Ray Train workers), the
trial tables, resuming an interrupted study.
"""

# The packages this one may import (tests/unit/test_architecture.py enforces it).
MAY_IMPORT = ("pipeline", "storage", "modalities", "data", "models", "training")
