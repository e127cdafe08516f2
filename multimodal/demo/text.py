"""The demo's text: a short English hint about the digit that carries partial information (parity, lower/upper
half, closed loop, primality), never the digit or its name, and never narrows it to a single candidate."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Closed-loop digits: 0, 6, 8, 9 obviously; 4 in its printed, closed form (fixed choice, documented above).
_LOOP_DIGITS = frozenset({0, 4, 6, 8, 9})
_PRIME_DIGITS = frozenset({2, 3, 5, 7})

# attribute -> (predicate, phrasings when true, phrasings when false). No wording may contain a digit name,
# not even inside another word ("one" in "none", "eight" in "weight"); a unit test enforces this.
_ATTRIBUTES: dict[str, tuple[Callable[[int], bool], tuple[str, ...], tuple[str, ...]]] = {
    "parity": (lambda d: d % 2 == 0, ("even", "an even digit"), ("odd", "an odd digit")),
    "magnitude": (
        lambda d: d >= 5,
        ("in the upper half of the digits", "among the larger digits"),
        ("in the lower half of the digits", "among the smaller digits"),
    ),
    "loop": (
        lambda d: d in _LOOP_DIGITS,
        ("written with a closed loop", "a shape with an enclosed hole"),
        ("written without any closed loop", "a shape with no enclosed hole"),
    ),
    "prime": (lambda d: d in _PRIME_DIGITS, ("prime", "a prime number"), ("not prime", "not a prime number")),
}
_SINGLE_TEMPLATES = ("The number is {a}.", "It is {a}.", "Hint: it is {a}.", "The answer is {a}.",
                     "The spoken number is {a}.")
_PAIR_TEMPLATES = ("The number is {a} and {b}.", "It is {a}, and also {b}.", "Hint: it is {a}; it is also {b}.",
                   "The answer is {a} as well as {b}.")
_PAIR_SHARE = 0.3


def hint(label: int, rng: np.random.Generator) -> str:
    """A sentence with one or two attributes of `label` that never leaves a single candidate digit."""
    names = list(_ATTRIBUTES)
    if rng.random() < _PAIR_SHARE:
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if _candidates(label, (a, b)) >= 2]
        a, b = pairs[rng.integers(len(pairs))]
        template = _PAIR_TEMPLATES[rng.integers(len(_PAIR_TEMPLATES))]
        return template.format(a=_phrase(label, a, rng), b=_phrase(label, b, rng))
    template = _SINGLE_TEMPLATES[rng.integers(len(_SINGLE_TEMPLATES))]
    return template.format(a=_phrase(label, names[rng.integers(len(names))], rng))


def _phrase(label: int, attribute: str, rng: np.random.Generator) -> str:
    """One wording of whether `label` has `attribute`."""
    predicate, if_true, if_false = _ATTRIBUTES[attribute]
    options = if_true if predicate(label) else if_false
    return options[rng.integers(len(options))]


def _candidates(label: int, attributes: tuple[str, ...]) -> int:
    """How many digits share `label`'s values on `attributes` (what a reader of the hint could narrow to)."""
    signature = [_ATTRIBUTES[a][0](label) for a in attributes]
    return sum(all(_ATTRIBUTES[a][0](d) == s for a, s in zip(attributes, signature)) for d in range(10))
