#!/usr/bin/env python3
"""Write the pinned SGLang's server flags, read from its own argument parser, into the operator package.

    python hack/sglang-flags.py            # rewrite operator/mimo_operator/sglang_flags.json and the CRD's rule
    python hack/sglang-flags.py --check    # exit 1 if either is not what the parser says

The operator never imports SGLang (its install stays light), yet it refuses spec.engine.extraArgs that
SGLang's argparse would refuse at gang start. This table is how it knows them: flag names, whether a flag
takes a value, the value's kind and its choices. The CRD's rule on spec.engine.extraArgs carries the flag names
too, so the apiserver refuses an unknown flag at admission. Needs SGLang's parser installed
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
CRD = REPO / "crds" / "mimodeployment.yaml"

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
    from sglang.srt.server_args import ServerArgs
    from sglang.version import __version__

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    flags: dict[str, Any] = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
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


NUL_RULE = r"!self.contains('\x00')"  # CEL's escape: the apiserver reads one NUL character


def crd_rule_lines(data: dict[str, Any], indent: str) -> list[str]:
    """The CEL rule on each spec.engine.extraArgs element: a flag must be one of SGLang's, written in full (a
    map literal: a lookup the apiserver's cost budget allows, where a prefix search over every flag is 4× over).
    Values of the wrong kind and the nearest name are the typed spec's business, shown in the operator's status."""
    names = ", ".join(f"'{name}': true" for name in data["flags"])
    rule = f"!self.startsWith('--') || self.split('=')[0] in {{{names}}}"
    message = (f"self.split('=')[0] + ' is not a flag of SGLang {data['sglang']} (flags are written in full; "
               "python -m sglang.launch_server --help lists them)'")
    # Before the flag rule, a NUL, which no argv element can carry (the typed spec's NUL_MESSAGE, word for word).
    nul = "must not contain a NUL character (it cannot pass to a process's arguments or environment)"
    return [
        f"{indent}x-kubernetes-validations:",
        f"{indent}  - rule: {json.dumps(NUL_RULE)}",
        f"{indent}    message: {json.dumps(nul)}",
        f"{indent}  - rule: {json.dumps(rule)}",
        f"{indent}    messageExpression: {json.dumps(message)}",
    ]


def render_crd(data: dict[str, Any], text: str) -> str:
    """The CRD with the extraArgs rule from ``data`` (replacing the one there)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "extraArgs:")
    items = next(i for i in range(start, len(lines)) if lines[i].strip() == "items:")
    depth = len(lines[items]) - len(lines[items].lstrip())
    end = items + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > depth):
        end += 1
    body = lines[items + 1:end]
    keep: list[str] = []
    skipping = False
    for line in body:
        here = len(line) - len(line.lstrip())
        if line.strip() == "x-kubernetes-validations:":
            skipping = True
            continue
        if skipping and here > depth + 2:
            continue
        skipping = False
        keep.append(line)
    lines[items + 1:end] = keep + crd_rule_lines(data, " " * (depth + 2))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed table is stale")
    args = parser.parse_args()
    text = render()
    crd = render_crd(json.loads(text), CRD.read_text())
    if args.check:
        stale = [p.relative_to(REPO) for p, t in ((OUTPUT, text), (CRD, crd)) if p.read_text() != t]
        if stale:
            print(f"{', '.join(map(str, stale))} stale: run python hack/sglang-flags.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    CRD.write_text(crd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
