"""What a person reads: the offline HTML report and model card, and the experiment comparison tables.
"""

# The packages this one may import (tests/unit/test_architecture.py enforces it).
MAY_IMPORT = ("pipeline", "storage", "modalities", "data")
