"""The layers of the code: the library never imports the services or the benchmarks, and training
and evaluation share metrics instead of importing each other (read from the source, by AST)."""

from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "shared" / "alzprog"


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, imported names)`` of every import statement in a file (nested ones included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
    return out


def library_files(sub: str = "") -> list[Path]:
    files = sorted((LIB / sub).rglob("*.py"))
    assert files, f"no sources under {LIB / sub}"
    return files


def test_the_library_imports_neither_services_nor_benchmarks() -> None:
    bad = [(str(p.relative_to(LIB)), m) for p in library_files() for m, _ in imports(p)
           if m.split(".")[0] in ("services", "benchmarks")]
    assert not bad, bad


def test_training_does_not_import_evaluation() -> None:
    bad = [(str(p.relative_to(LIB)), m) for p in library_files("training") for m, _ in imports(p)
           if m.startswith("alzprog.evaluation")]
    assert not bad, bad


def test_evaluation_uses_no_private_name_of_training() -> None:
    bad = [(str(p.relative_to(LIB)), m, n) for p in library_files("evaluation") for m, names in imports(p)
           if m.startswith("alzprog.training") for n in names if n.startswith("_")]
    assert not bad, bad


def test_evaluation_does_not_train() -> None:
    bad = [(str(p.relative_to(LIB)), n) for p in library_files("evaluation") for m, names in imports(p)
           if m.startswith("alzprog.training") for n in names if n.startswith("train")]
    assert not bad, bad
