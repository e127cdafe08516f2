"""Using a trained model (or a compressed variant of it): predictions on a new manifest, the ONNX export, the Ray
Serve endpoint.
"""

# The packages this one may import (tests/unit/test_architecture.py enforces it).
MAY_IMPORT = ("pipeline", "storage", "modalities", "data", "models", "training", "compression")
