"""The one validator of user-facing values: every config, option and argument a user can get wrong is
checked here, so that each mistake gives the same kind of message, naming the field and what is allowed.

    positive_int("SleepConfig.window", 0)         → ValueError: SleepConfig.window must be a positive integer, got 0
    one_of("SleepConfig.eviction", "soft", MODES) → ValueError: ... must be one of ('hard', ...), got 'soft'
    check_types(config)                            → TypeError naming the first field of the wrong type
    from_dict(TrainConfig, data, "train config")   → the dataclass, or a ValueError naming unknown fields

Type errors (a string where a number belongs) raise `WrongType`, a TypeError that is also a ValueError (a
value read from JSON or a command line is a bad value either way, and callers that catch ValueError keep
working); out-of-range values raise ValueError. Both name the field. `bool` is never accepted as a number,
and floats must be finite.
"""
from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import fields, is_dataclass
from typing import Any, Iterable


class WrongType(TypeError, ValueError):
    """A value of the wrong type for its field."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def integer(name: str, value, low: int | None = None, high: int | None = None, why: str = "") -> int:
    """An integer in [low, high] (either bound may be None); `why` says where a bound comes from (another field)."""
    return _integer(name, value, low, high, "an integer" + _bounds(low, high) + (f" ({why})" if why else ""))


def positive_int(name: str, value) -> int:
    return _integer(name, value, 1, None, "a positive integer")


def non_negative_int(name: str, value) -> int:
    return _integer(name, value, 0, None, "a non-negative integer")


def _integer(name: str, value, low: int | None, high: int | None, allowed: str) -> int:
    if not _is_int(value):
        raise WrongType(f"{name} must be {allowed}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def number(name: str, value, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number in [low, high] ((low, high ... with low_open / high_open)."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    allowed = "a finite number"
    if low is not None or high is not None:
        allowed += f" in {left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    if not _is_number(value):
        if _is_int(value) or isinstance(value, float):  # nan or inf
            raise ValueError(f"{name} must be {allowed}, got {value!r}")
        raise WrongType(f"{name} must be {allowed}, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def positive_number(name: str, value) -> float:
    return number(name, value, 0, None, low_open=True)


def one_of(name: str, value, choices: Iterable) -> Any:
    choices = tuple(choices)
    # Same type as well as equal: True == 1 and 1.0 == 1 in Python, but neither is the choice 1.
    if not any(type(value) is type(choice) and value == choice for choice in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def int_list(name: str, value, low: int = 1) -> list[int]:
    """A list of integers >= low."""
    if not isinstance(value, list) or not all(_is_int(v) for v in value):
        raise WrongType(f"{name} must be a list of integers >= {low}, got {value!r}")
    if any(v < low for v in value):
        raise ValueError(f"{name} must be a list of integers >= {low}, got {value!r}")
    return value


def _bounds(low, high) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    return f" <= {high}" if high is not None else ""


# ----- types of dataclass fields -----

def _matches(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return _is_int(value)
    if annotation is float:
        return _is_int(value) or isinstance(value, float)  # range and finiteness are checked by `number`
    if annotation is str:
        return isinstance(value, str)
    if origin is list or annotation is list:
        args = typing.get_args(annotation)
        return isinstance(value, list) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict or annotation is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def _describe(annotation) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if typing.get_origin(annotation) is not None:
        return str(annotation)  # e.g. list[int]
    return getattr(annotation, "__name__", str(annotation))


def check_types(instance) -> None:
    """TypeError naming the first field of a dataclass instance whose value is not of its declared type."""
    owner = type(instance).__name__
    hints = typing.get_type_hints(type(instance))
    for field in fields(instance):
        value = getattr(instance, field.name)
        if not _matches(value, hints[field.name]):
            raise WrongType(f"{owner}.{field.name} must be {_describe(hints[field.name])}, got {value!r}")


def from_dict(cls, data, what: str):
    """Build dataclass `cls` from a JSON object, naming unknown fields (and the known ones)."""
    assert is_dataclass(cls)
    if not isinstance(data, dict):
        raise WrongType(f"{what} must be a JSON object, got {type(data).__name__}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(known), key=str)
    if unknown:
        raise ValueError(f"{what} has unknown fields {unknown}; known fields are {sorted(known)}")
    return cls(**data)


def from_json(cls, text: str, what: str):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} is not valid JSON: {error}") from None
    return from_dict(cls, data, what)


def parse_int(name: str, text: str) -> int:
    """An integer written on the command line (`--opt t_min=3`), with a message that names the option."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None
