"""Compression of a trained model: int8 weights, magnitude pruning with a sparse encoding, distillation into a
smaller student; each variant saved as safetensors + JSON, scored on the test rows and timed like the original.
"""

# The packages this one may import (tests/unit/test_architecture.py enforces it).
MAY_IMPORT = ("pipeline", "storage", "modalities", "data", "models", "training", "evaluation")
