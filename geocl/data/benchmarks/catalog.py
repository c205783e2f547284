"""The benchmarks by name."""

from __future__ import annotations

import difflib

from geocl.data.benchmarks.base import Benchmark
from geocl.data.benchmarks.isprs import POTSDAM, VAIHINGEN
from geocl.data.benchmarks.loveda import LOVEDA, LOVEDA_RURAL, LOVEDA_URBAN
from geocl.errors import InvalidInputError

#: The benchmarks by name.
BENCHMARKS: dict[str, Benchmark] = {
    "potsdam": POTSDAM,
    "vaihingen": VAIHINGEN,
    "loveda": LOVEDA,
    "loveda-urban": LOVEDA_URBAN,
    "loveda-rural": LOVEDA_RURAL,
}


def get_benchmark(name: str, key: str = "dataset") -> Benchmark:
    """The benchmark called ``name``.

    Raises:
        GeoclError: for an unknown name, listing the choices (and the closest one).
    """
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    close = difflib.get_close_matches(str(name).lower(), list(BENCHMARKS), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise InvalidInputError(f"unknown dataset {name!r}{hint} (choices: {', '.join(BENCHMARKS)})", key=key)
