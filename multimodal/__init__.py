"""The library behind the stages, one package per concern; imports point down this list, never up:

pipeline (plumbing) <- storage <- modalities <- data, demo, models <- preprocessing, training <- tuning, evaluation,
shipping; reporting reads data. Each package's `MAY_IMPORT` names what it may import (docs/architecture.md).
"""
