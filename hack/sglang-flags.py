#!/usr/bin/env python3
"""Write the pinned SGLang's server flags, read from its own argument parser, into the operator package.

    python hack/sglang-flags.py            # rewrite operator/mimo_operator/sglang_flags.json
    python hack/sglang-flags.py --check    # exit 1 if the committed table is not what the parser says

The operator never imports SGLang (its install stays light), yet it refuses spec.engine.extraArgs that
SGLang's argparse would refuse at gang start. This table is how it knows them: flag names, whether a flag
takes a value, the value's kind and its choices. Needs SGLang's parser installed
(`pip install --no-deps -r hack/sglang-parser-requirements.txt`, which hack/setup.sh does);
tests/unit/test_sglang_flags.py regenerates the table and fails when it is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "operator" / "mimo_operator" / "sglang_flags.json"

# SGLang's value converters by name, as the kinds the operator checks (sglang_flags.py reads the same names).
_KINDS = {
    "int": "int", "float": "float", "str": "str", "nullable_str": "str",
    "human_readable_int": "human-int",
    "loads": "json", "json_list_type": "json", "parse_cuda_graph_config_arg": "json",
    "parse_cuda_graph_backend_arg": "str",
}


def _kind(action: argparse.Action) -> str:
    if action.type is None:
        return "str"
    name = getattr(action.type, "__name__", type(action.type).__name__)
    if name not in _KINDS:
        raise SystemExit(f"{action.option_strings}: unknown value type {name!r}; add it to _KINDS")
    return _KINDS[name]


def table() -> dict[str, Any]:
    from sglang.srt.server_args import ServerArgs  # noqa: PLC0415 (only this script needs SGLang)
    from sglang.version import __version__  # noqa: PLC0415

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    flags: dict[str, Any] = {}
    for action in parser._actions:  # noqa: SLF001 (argparse has no public list of its actions)
        if isinstance(action, argparse._HelpAction):  # noqa: SLF001
            continue
        takes_value = action.nargs != 0
        entry: dict[str, Any] = {"dest": action.dest, "takes_value": takes_value}
        if takes_value:
            entry["nargs"] = action.nargs
            entry["kind"] = _kind(action)
            if action.choices is not None:
                entry["choices"] = sorted(action.choices, key=str)
        if "deprecat" in type(action).__name__.lower() or "deprecat" in (action.help or "").lower()[:200]:
            entry["deprecated"] = True
        for option in action.option_strings:
            flags[option] = entry
    return {
        "sglang": __version__,
        "abbreviations": parser.allow_abbrev,
        "flags": dict(sorted(flags.items())),
    }


def render() -> str:
    """One flag per line, so that an SGLang upgrade's diff reads flag by flag."""
    data = table()
    lines = [f" {json.dumps(name)}: {json.dumps(entry, sort_keys=True)}" for name, entry in data["flags"].items()]
    return (f'{{"sglang": {json.dumps(data["sglang"])}, "abbreviations": {json.dumps(data["abbreviations"])},\n'
            ' "flags": {\n' + ",\n".join(lines) + "\n}}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed table is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(REPO)} is stale: run python hack/sglang-flags.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
