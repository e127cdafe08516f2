"""Evaluation: scores with intervals, the classical baseline, calibration, robustness and missing-modality
curves, efficiency, plots, and the cross-machine reproducibility check.
"""

# The packages this one may import (tests/unit/test_architecture.py enforces it).
MAY_IMPORT = ("pipeline", "storage", "modalities", "data", "models", "training")
