"""The dataset: the manifest contract, and validation (per-sample profile, Great Expectations suites, the
report and Data Docs); the `ingest` and `validate` params.
"""

# The packages this one may import (tests/unit/test_architecture.py enforces it).
MAY_IMPORT = ("pipeline", "storage", "modalities")
