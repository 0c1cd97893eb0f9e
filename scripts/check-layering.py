#!/usr/bin/env python3
"""Checks that the library's top-level modules (src/<name>.rs, src/<name>/) import each other only
downwards, along the layering written out below, so that no import cycle can form.

    scripts/check-layering.py          # exit 1 and name each offending file and import

An import is any `crate::<module>` path outside comments, including the names inside
`use crate::{a, b::c}`. The binary (src/main.rs, src/cli/) sits on top of everything and is not
checked. A new top-level module must be added to LAYERS, with what it may use.
"""
import pathlib
import re
import sys

# Who may import whom. Read bottom-up: ids and reference depend on nothing; the sandbox knows
# nothing of images; the store knows nothing of the sandbox; the runner ties them together; the
# doctor probes the whole stack; serve is HTTP over the runner.
LAYERS = {
    "ids": set(),
    "reference": set(),
    "registry": {"reference"},
    "unpack": {"ids"},
    "store": {"ids", "reference", "registry", "unpack"},
    "sandbox": {"ids"},
    "runner": {"ids", "reference", "registry", "unpack", "store", "sandbox"},
    "doctor": {"ids", "reference", "registry", "unpack", "store", "sandbox", "runner"},
    # nsrun serve: a thin HTTP layer over the runner.
    "serve": {"ids", "reference", "registry", "unpack", "store", "sandbox", "runner"},
}


def acyclic(layers):
    """The allowed graph itself must have no cycle (Kahn's algorithm)."""
    pending = {m: set(d) for m, d in layers.items()}
    while pending:
        ready = [m for m, d in pending.items() if not d - {m}]
        if not ready:
            return sorted(pending)
        for m in ready:
            del pending[m]
        for d in pending.values():
            d.difference_update(ready)
    return []


def imports(text):
    """Top-level module names that `text` (Rust source) reaches through `crate::`."""
    code = "\n".join(re.sub(r"//.*", "", line) for line in text.splitlines())
    found = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", code))
    for m in re.finditer(r"\bcrate::\{", code):
        depth, i, expect = 1, m.end(), True
        while depth and i < len(code):
            c = code[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            elif c == ",":
                expect = depth == 1
            elif expect and depth == 1 and (c.isalpha() or c == "_"):
                name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", code[i:]).group(0)
                found.add(name)
                i += len(name)
                expect = False
                continue
            i += 1
    return found


def main():
    src = pathlib.Path(__file__).resolve().parent.parent / "src"
    lib = (src / "lib.rs").read_text()
    tops = set(re.findall(r"^pub mod ([a-z_]+);", lib, re.M)) | set(re.findall(r"^mod ([a-z_]+);", lib, re.M))
    errors = []
    if tops != set(LAYERS):
        errors.append(f"src/lib.rs declares {sorted(tops)}, LAYERS names {sorted(LAYERS)}: update LAYERS")
    cycle = acyclic(LAYERS)
    if cycle:
        errors.append(f"LAYERS itself has a cycle among {cycle}")
    for top in sorted(tops & set(LAYERS)):
        files = [src / f"{top}.rs"] if (src / f"{top}.rs").exists() else sorted((src / top).rglob("*.rs"))
        for f in files:
            for used in sorted(imports(f.read_text()) & set(LAYERS)):
                if used != top and used not in LAYERS[top]:
                    errors.append(f"{f.relative_to(src.parent)}: {top} may not import crate::{used}")
    for e in errors:
        print(f"check-layering: {e}", file=sys.stderr)
    if errors:
        sys.exit(1)
    print(f"check-layering: {len(tops)} top-level modules, imports follow the layering")


if __name__ == "__main__":
    main()
