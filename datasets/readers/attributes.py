"""Every numeric attribute a reader uses goes through here: one conversion, one named error.

Producers store numbers as text (``gain = b"2.0"``, ``nodata = b"-9999000.0"``), as
one-element arrays or as numpy scalars. A number compared with a string is silently never
equal (nodata pixels then pass for rain), and ``float(b"abc")`` raises a ValueError that
names neither the file nor the attribute. These helpers accept numeric text, refuse
everything else with ``AttributeValueError`` naming file, attribute and value.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from meteovision.datasets.errors import AttributeValueError


def _text(value: Any) -> str | None:
    """The value as text when it is a string or bytes, else None."""
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace").strip("\x00").strip()
    if isinstance(value, str | np.str_):
        return str(value).strip()
    return None


def _scalar(value: Any, path: Path, attribute: str) -> Any:
    """A one-element array as its element; a longer array is an error."""
    if isinstance(value, np.ndarray | list | tuple):
        arr = np.asarray(value)
        if arr.size != 1:
            raise AttributeValueError(path, f"attribute {attribute} = {value!r} holds {arr.size} values, "
                                            "expected one number")
        return arr.reshape(-1)[0]
    return value


def as_float(value: Any, path: Path, attribute: str, *, finite: bool = True) -> float:
    """One number from an attribute (numeric text accepted); ``finite`` refuses NaN and infinity."""
    value = _scalar(value, path, attribute)
    text = _text(value)
    if isinstance(value, bool | np.bool_):
        raise AttributeValueError(path, f"attribute {attribute} = {value!r} is a boolean, expected a number")
    if text is not None:
        try:
            number = float(text)
        except ValueError:
            raise AttributeValueError(path, f"attribute {attribute} = {value!r} is not a number") from None
    elif isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
    else:
        raise AttributeValueError(path, f"attribute {attribute} = {value!r} ({type(value).__name__}) "
                                        "is not a number")
    if finite and not math.isfinite(number):
        raise AttributeValueError(path, f"attribute {attribute} = {value!r} is not a finite number")
    return number


def as_int(value: Any, path: Path, attribute: str) -> int:
    """A whole number from an attribute (``1900``, ``b"1900"``, ``1900.0``); ``b"1900 px"`` is refused."""
    number = as_float(value, path, attribute)
    if number != int(number):
        raise AttributeValueError(path, f"attribute {attribute} = {value!r} is not a whole number")
    return int(number)


def as_numbers(value: Any, path: Path, attribute: str) -> np.ndarray:
    """One or more numbers as a 1-D array, keeping a numeric array's own dtype (integer fill values).

    Text is parsed as one number (float64). NaN is allowed: a float fill value may be NaN.
    """
    text = _text(value)
    if text is not None:
        return np.array([as_float(text, path, attribute, finite=False)])
    arr = np.atleast_1d(np.asarray(value))
    if arr.dtype.kind in "SU":
        return np.array([as_float(v, path, attribute, finite=False) for v in arr.reshape(-1)])
    if arr.dtype.kind not in "iuf" or arr.size == 0:
        raise AttributeValueError(path, f"attribute {attribute} = {value!r} is not a number")
    return arr.reshape(-1)
