"""The package's layering (DESIGN.md): imports flow one way, rules see models only through their
protocols, and no two modules import each other."""

import ast
from pathlib import Path
from typing import Dict, Set

SRC = Path(__file__).resolve().parent.parent / "src" / "bioprop"

#: a package (or top-level module) may import only from packages of a lower floor (or its own)
FLOOR = {"config": 0, "neurons": 0, "equilibrium": 0, "metrics": 0, "distributed": 0, "nonfinite": 0, "_version": 0,
         "models": 1, "data": 1, "rules": 2, "train": 3, "meta": 4, "export": 4, "plot": 4, "cli": 5, "__main__": 6,
         "__init__": 6}
#: the only modules of ``models`` that rules may import: protocols and shared records, no architecture
RULES_MAY_IMPORT = {"bioprop.models.protocols", "bioprop.models.base"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> Set[str]:
    """Every ``bioprop.*`` module ``path`` imports (relative or absolute, at any depth)."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("bioprop"):
                if node.module or not node.level:  # `from .. import x` imports the modules x, not the package
                    out.add(target)
                for alias in node.names:  # `from . import alignment` imports a module
                    if (SRC.parent / (target + "." + alias.name).replace(".", "/")).with_suffix(".py").exists():
                        out.add(f"{target}.{alias.name}")
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("bioprop")}
    return out


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> Dict[str, Set[str]]:
    return {_module_name(p): _imports(p) for p in SRC.rglob("*.py")}


def test_imports_flow_downward_and_rules_see_only_protocols():
    bad = []
    for mod, targets in _graph().items():
        src = _top(mod)
        for t in targets:
            dst = _top(t)
            if dst == src:
                continue
            if FLOOR.get(dst, 99) >= FLOOR.get(src, -1):
                bad.append(f"{mod} imports {t} (floor {FLOOR.get(dst)} >= {FLOOR.get(src)})")
            if src == "rules" and dst == "models" and t not in RULES_MAY_IMPORT:
                bad.append(f"{mod} imports the model module {t}: rules see models through bioprop.models.protocols")
    assert not bad, "\n".join(bad)


def test_no_two_modules_import_each_other():
    graph = _graph()
    cycles = sorted({tuple(sorted((a, b))) for a, ts in graph.items() for b in ts
                     if b in graph and a in graph[b] and a != b
                     and not (b == a.rsplit(".", 1)[0] or a == b.rsplit(".", 1)[0])})  # a package and its own module
    assert not cycles, cycles
