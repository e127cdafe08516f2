"""The model: encoders into one shared space (`Embedder`), fusions, the head, fine-tuning strategies, and the
saved bundle that lets a model read raw inputs.
"""

# The packages this one may import (tests/unit/test_architecture.py enforces it).
MAY_IMPORT = ("pipeline", "storage", "modalities")
