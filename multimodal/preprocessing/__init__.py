"""Per-modality preprocessing: manifest rows to sharded processor outputs, in this process or as Ray tasks.
"""

# The packages this one may import (tests/unit/test_architecture.py enforces it).
MAY_IMPORT = ("pipeline", "storage", "modalities", "data")
