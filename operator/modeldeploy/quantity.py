"""Kubernetes resource quantities: parsing (``500m``, ``64Gi``, ``1e3``) and formatting.

Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from modeldeploy.sizing import MIB

_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(Ki|Mi|Gi|Ti|Pi|Ei)|([numkMGTPE])|[eE]([+-]?[0-9]+))?$"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def parse_quantity(value: str | int | float) -> Fraction:
    """Parse a Kubernetes quantity (``500m``, ``64Gi``, ``128974848Ki``, ``1e3``) exactly."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(str(value))
    match = _QUANTITY.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number, binary, decimal, exponent = match.groups()
    amount = Fraction(number)
    if binary:
        return amount * Fraction(1024) ** _BINARY[binary]
    if exponent is not None:
        return amount * Fraction(10) ** int(exponent)
    return amount * Fraction(10) ** _DECIMAL[decimal or ""]


def cpu_millis(value: str | int | float) -> int:
    """A CPU quantity in millicores, rounded up as the API server does."""
    return math.ceil(parse_quantity(value) * 1000)


def quantity_bytes(value: str | int | float) -> int:
    """A memory quantity in bytes, rounded up."""
    return math.ceil(parse_quantity(value))


def mib_quantity(value: int) -> str:
    """Bytes as a whole-MiB quantity, rounded up (``4096Mi``)."""
    return f"{math.ceil(value / MIB)}Mi"


def cpu_quantity(millis: int) -> str:
    """Millicores as a CPU quantity: whole cores when they are whole (``4``, ``1500m``)."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"
