"""The embedded demo dataset, built offline from what pip installs: digits, synthetic speakers, hints, clips.
"""

# The packages this one may import (tests/unit/test_architecture.py enforces it).
MAY_IMPORT = ("pipeline", "storage")
