"""After `mkdocs build`: every name a subpackage exports in `__all__` (and the top-level modules) has an entry in
the API reference (the site's objects.inv, written by mkdocstrings). Exit 1 listing the missing names."""

from __future__ import annotations

import importlib
import sys
import zlib
from pathlib import Path

MODULES = ["callbacks", "discedit", "unlearning", "editable", "robust", "edit", "metanet", "data", "models"]


def documented(inventory: Path) -> set[str]:
    raw = inventory.read_bytes()
    body = raw.split(b"\n", 4)[4]  # four header lines, then zlib
    return {line.split(" ", 1)[0] for line in zlib.decompress(body).decode().splitlines() if line}


def main() -> int:
    names = documented(Path(sys.argv[1] if len(sys.argv) > 1 else "site/objects.inv"))
    missing = [f"lightning_edit.{n}" for n in ("ClassifierModule", "EditableModule") if f"lightning_edit.{n}" not in names]
    for mod in MODULES:
        module = importlib.import_module(f"lightning_edit.{mod}")
        for n in module.__all__:
            home = getattr(getattr(module, n), "__module__", None)  # a function shadowed by its own submodule's name
            if f"lightning_edit.{mod}.{n}" not in names and f"{home}.{n}" not in names:
                missing.append(f"lightning_edit.{mod}.{n}")
    if missing:
        print("not in the API reference:\n  " + "\n  ".join(missing))
        return 1
    print(f"API reference: every public name of {len(MODULES)} subpackages is documented")
    return 0


if __name__ == "__main__":
    sys.exit(main())
