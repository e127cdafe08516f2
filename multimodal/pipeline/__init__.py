"""The pipeline's own plumbing: params loading and the stage params guard, stage code deps, offline switches,
the process runtime (seeds, device), joining Ray, safe rendering (escaping, offline HTML), metrics file names.
At the bottom: it imports no other package of the library.
"""

# The packages this one may import (tests/unit/test_architecture.py enforces it).
MAY_IMPORT = ()
