"""Bytes on disk: atomic writes, manifest paths confined to their folder, tensor codecs, shard files and the
lazily read columns and splits (`SplitData`) every later stage trains and evaluates on.
"""

# The packages this one may import (tests/unit/test_architecture.py enforces it).
MAY_IMPORT = ("pipeline",)
