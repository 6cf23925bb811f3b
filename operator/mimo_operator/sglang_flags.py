"""The pinned SGLang's server flags, and the check of ``spec.engine.extraArgs`` against them.

``sglang_flags.json`` beside this module is generated from SGLang's own argument parser by
``hack/sglang-flags.py`` (``tests/unit/test_sglang_flags.py`` fails when it is stale), so the operator can
refuse what SGLang's argparse would refuse at gang start without importing SGLang. The walk follows
argparse: ``--flag value`` and ``--flag=value``, ``nargs`` lists, bare values that no flag takes, and values that
argparse would take for an option (see :func:`taken_for_an_option`); abbreviations, which SGLang's argparse
expands, are refused (see :func:`resolve`). The planner reads the same walk (:func:`parse_extra_args`) to refuse
flags that contradict its plan.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from typing import Any

from mimo_operator.errors import SpecError

__all__ = ["FIELD", "ExtraFlag", "check_extra_args", "flag_table", "human_int", "parse_extra_args", "resolve",
           "taken_for_an_option"]

FIELD = "spec.engine.extraArgs"
_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)")
_SI = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_IEC = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
# What argparse takes for a negative number rather than an option (its _negative_number_matcher before Python
# 3.13, which widened it; the narrower one holds in every Python the engine image may run).
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


@dataclass(frozen=True)
class ExtraFlag:
    """One flag of ``spec.engine.extraArgs``: where it stands, the pinned SGLang's name and dest, its values."""

    index: int
    flag: str
    dest: str
    values: tuple[str, ...]

    @property
    def field(self) -> str:
        return f"{FIELD}[{self.index}]"


@cache
def flag_table() -> Mapping[str, Any]:
    """``{"sglang": version, "abbreviations": bool, "flags": {"--name": {...}}}`` from the generated file."""
    text = resources.files("mimo_operator").joinpath("sglang_flags.json").read_text()
    data: Mapping[str, Any] = json.loads(text)
    return data


def resolve(name: str) -> str:
    """``name`` itself when it is one of the pinned SGLang's flags; SpecError otherwise, with the flag it
    abbreviates or the nearest ones. Abbreviations are refused although SGLang's argparse expands unique ones:
    the next SGLang may add a flag that makes one ambiguous, and the gang would crash at start after an upgrade
    (the CRD's rule on extraArgs, from the same table, refuses them at admission too)."""
    table = flag_table()
    flags: Mapping[str, Any] = table["flags"]
    if name in flags:
        return name
    refusal = f"{name} is not a flag of SGLang {table['sglang']} (flags are written in full"
    starts = sorted(f for f in flags if f.startswith(name)) if len(name) > 2 else []
    if len(starts) == 1:
        raise SpecError(FIELD, f"{refusal}: it abbreviates {starts[0]}; write {starts[0]})")
    if starts:
        shown = ", ".join(starts[:6]) + (", …" if len(starts) > 6 else "")
        raise SpecError(FIELD, f"{refusal}; it is the start of {shown})")
    nearest = difflib.get_close_matches(name, list(flags), n=3, cutoff=0.6)
    hint = (f"; did you mean {' or '.join(nearest)}?" if nearest
            else "; python -m sglang.launch_server --help lists them)")
    raise SpecError(FIELD, f"{refusal}{')' if nearest else ''}{hint}")


def human_int(value: str) -> int:
    """SGLang's ``human_readable_int``: ``4096``, ``32k`` (SI, decimals allowed) or ``1Mi`` (IEC, whole numbers);
    ValueError otherwise."""
    text = value.strip()
    match = _HUMAN_INT.fullmatch(text)
    if match is None:
        return int(text)
    number, suffix = match.groups()
    if suffix in _IEC:
        if "." in number:
            raise ValueError(f"decimals are not allowed with {suffix}")
        return int(number) * _IEC[suffix]
    return int(Decimal(number) * _SI[suffix])


def taken_for_an_option(value: str) -> bool:
    """Whether argparse takes ``value`` for an option string rather than the value of the flag before it: it starts
    with a dash and is neither a lone dash, nor a negative number, nor holds a space (argparse's _parse_optional)."""
    return value.startswith("-") and value != "-" and not _NEGATIVE_NUMBER.match(value) and " " not in value


def _value_error(flag: str, entry: Mapping[str, Any], value: str) -> str | None:
    """Why SGLang's converter for ``flag`` would refuse ``value``, or None."""
    kind = entry.get("kind", "str")
    converted: Any = value
    try:
        if kind == "int":
            converted = int(value)
        elif kind == "float":
            converted = float(value)
        elif kind == "human-int":
            converted = human_int(value)
        elif kind == "json":
            json.loads(value)
    except (ValueError, InvalidOperation):
        kinds = {"int": "an integer", "float": "a number", "human-int": "an integer such as 4096, 32k or 1Mi",
                 "json": "JSON"}
        return f"{flag} takes {kinds.get(kind, kind)} (got {value!r})"
    choices = entry.get("choices")
    if choices is not None and converted not in choices:
        nearest = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean {nearest[0]}?" if nearest else ""
        return f"{flag} takes one of {', '.join(map(str, choices))} (got {value!r}){hint}"
    return None


def check_extra_args(args: Sequence[str]) -> None:
    """Refuse what the pinned SGLang's argparse would refuse in ``args``, naming the element and the fix."""
    parse_extra_args(args)


def parse_extra_args(args: Sequence[str]) -> list[ExtraFlag]:
    """``args`` read as the pinned SGLang's argparse reads them, one :class:`ExtraFlag` per flag; SpecError,
    naming the element and the fix, where argparse would refuse them."""
    flags: Mapping[str, Any] = flag_table()["flags"]
    out: list[ExtraFlag] = []
    i = 0
    while i < len(args):
        arg = args[i]
        field = f"{FIELD}[{i}]"
        if not arg.startswith("-") or arg in ("-", "--"):
            raise SpecError(field, f"{arg!r} follows no flag that takes a value "
                                   "(SGLang would refuse it as an unrecognised argument)")
        if not arg.startswith("--"):
            raise SpecError(field, f"{arg!r}: SGLang's server flags are long options starting with --")
        name, eq, inline = arg.partition("=")
        try:
            flag = resolve(name)
        except SpecError as error:
            raise SpecError(field, error.message) from None
        entry = flags[flag]
        shown = flag
        start = i
        i += 1
        if not entry["takes_value"]:
            if eq:
                raise SpecError(field, f"{shown} is a switch and takes no value (got {inline!r})")
            out.append(ExtraFlag(start, flag, entry["dest"], ()))
            continue
        nargs = entry.get("nargs")
        if eq:
            values = [inline]
        elif nargs in ("+", "*"):
            values = []
            while i < len(args) and not taken_for_an_option(args[i]):
                values.append(args[i])
                i += 1
            if nargs == "+" and not values:
                raise SpecError(field, f"{shown} needs at least one value after it" + _dash_hint(shown, args, i))
        elif nargs == "?":
            values = []
            if i < len(args) and not taken_for_an_option(args[i]):
                values.append(args[i])
                i += 1
        else:
            count = 1 if nargs is None else int(nargs)
            values = list(args[i:i + count])
            if len(values) < count or any(v.startswith("--") for v in values):
                raise SpecError(field, f"{shown} needs a value after it")
            if any(map(taken_for_an_option, values)):
                raise SpecError(field, f"{shown} needs a value after it" + _dash_hint(shown, args, i))
            i += count
        for value in values:
            problem = _value_error(shown, entry, value)
            if problem is not None:
                raise SpecError(field, problem)
        out.append(ExtraFlag(start, flag, entry["dest"], tuple(values)))
    return out


def _dash_hint(flag: str, args: Sequence[str], at: int) -> str:
    """How to pass a value that starts with a dash, when one follows ``flag``."""
    if at >= len(args) or not taken_for_an_option(args[at]) or args[at].startswith("--"):
        return ""
    value = args[at]
    return (f", and argparse takes {value!r} for an option because it starts with a dash: "
            f"write {flag}={value} as one element")
