"""Training: the one training loop (`fit`), augmentation in it, data parallelism, contrastive alignment
(`align`), fine-tuning a model from the aligned embedder, and loading splits for training.
"""

# The packages this one may import (tests/unit/test_architecture.py enforces it).
MAY_IMPORT = ("pipeline", "storage", "modalities", "data", "models")
