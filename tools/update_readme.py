"""Regenerate the generated sections of README.md.

- between ``<!-- begin: bioprop list -->`` and ``<!-- end: bioprop list -->``: the output of
  ``bioprop list --markdown`` (models, rules, datasets from the registries);
- between ``<!-- begin: results -->`` and ``<!-- end: results -->``: the results tables built
  from ``benchmarks/results/*.jsonl`` by ``benchmarks/tables.py``.

    PYTHONPATH=src python tools/update_readme.py [--check]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def sections() -> dict:
    from bioprop.cli import list_markdown
    from tables import results_markdown

    return {"bioprop list": list_markdown(), "results": results_markdown()}


def render(text: str) -> str:
    for name, body in sections().items():
        pat = re.compile(rf"(<!-- begin: {re.escape(name)} -->\n).*?(<!-- end: {re.escape(name)} -->)", re.S)
        if not pat.search(text):
            raise SystemExit(f"README.md has no '<!-- begin: {name} -->' ... '<!-- end: {name} -->' section")
        text = pat.sub(lambda m: m.group(1) + body + m.group(2), text)
    return text


def main() -> None:
    readme = ROOT / "README.md"
    old = readme.read_text()
    new = render(old)
    if "--check" in sys.argv:
        if new != old:
            raise SystemExit("README.md is out of date: run PYTHONPATH=src python tools/update_readme.py")
        return
    readme.write_text(new)


if __name__ == "__main__":
    main()
