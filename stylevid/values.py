"""Reading numbers a user typed (a Hydra key, a CSV cell) with one-line errors instead of tracebacks.

`int("abc")`, `int(1e30)` or a NaN guidance scale would otherwise surface as a ValueError deep in a task, or not
at all (a NaN scale silently turns guidance off). Every key a user can set goes through these before anything
loads, so the message names the key and says what it must be.
"""

from __future__ import annotations

import math

from .errors import UserInputError

# Seeds go to torch.Generator.manual_seed, which takes a 64-bit value; larger ints overflow inside torch.
MAX_SEED = 2**63 - 1


def integer(value, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` as an int (an int, or a string of digits), within [minimum, maximum]; else a UserInputError naming `key`."""
    if isinstance(value, bool) or value is None:
        raise UserInputError(f"{key} must be an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise UserInputError(f"{key} must be an integer, got {value!r}")
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if not text.lstrip("+-").isdigit():
            raise UserInputError(f"{key} must be an integer, got {value!r}")
        value = int(text)
    if not isinstance(value, int):
        raise UserInputError(f"{key} must be an integer, got {value!r}")
    _check_range(value, key, minimum, maximum)
    return value


def number(value, key: str, minimum: float | None = None, maximum: float | None = None, *, above: float | None = None) -> float:
    """`value` as a finite float within [minimum, maximum] (and > `above`); NaN and infinity are refused."""
    if isinstance(value, bool) or value is None:
        raise UserInputError(f"{key} must be a number, got {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserInputError(f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(result):
        raise UserInputError(f"{key} must be a finite number, got {value!r}")
    if above is not None and not result > above:
        raise UserInputError(f"{key} must be greater than {above:g}, got {value!r}")
    _check_range(result, key, minimum, maximum)
    return result


def seed(value, key: str = "seed") -> int:
    return integer(value, key, minimum=0, maximum=MAX_SEED)


def _check_range(value, key: str, minimum, maximum) -> None:
    if minimum is not None and value < minimum:
        bound = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise UserInputError(f"{key} must be {bound}, got {value!r}")
    if maximum is not None and value > maximum:
        bound = f"at most {maximum}" if minimum is None else f"between {minimum} and {maximum}"
        raise UserInputError(f"{key} must be {bound}, got {value!r}")
