"""The server package's folders are its layers, and imports only go downward.

Every import of every module under ``server/medsam_server`` (top level and inside
functions, relative and absolute) is resolved from the source (AST, nothing imported)
and checked against the layer order. Above the engine, the engine is used only through
its public names (``medsam_server.engine``), never through its modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "server" / "medsam_server"
# Lower rank = lower layer. batch and service are siblings: neither imports the other.
RANK = {"__init__": 0, "checkpoints": 0, "engine": 1, "io": 2, "batch": 3, "service": 3,
        "cli": 4}
MAX_LINES = 500


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found.append((".".join(["medsam_server", *parts]), path))
    return found


def imported_modules(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted module) of every medsam_server import in one file."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None:  # from . import x: x may be a module of that package
                out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
    return [(line, mod) for line, mod in out if mod.split(".")[0] == "medsam_server"]


def layer(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_is_in_a_known_layer():
    unknown = [name for name, _ in modules() if layer(name) not in RANK]
    assert not unknown, f"modules outside the layer folders {sorted(RANK)}: {unknown}"
    assert len(modules()) > 30  # the walk found the package


def test_imports_only_go_down_and_use_the_engines_public_names():
    upward, private = [], []
    for name, path in modules():
        here = layer(name)
        for line, target in imported_modules(name, path):
            there = layer(target)
            where = f"{path.relative_to(PKG)}:{line} imports {target}"
            if there == here:
                continue
            if RANK.get(there, 0) >= RANK[here]:
                upward.append(where)
            if there == "engine" and target != "medsam_server.engine":
                private.append(where)
    assert not upward, "imports that go up or sideways between layers:\n" + "\n".join(upward)
    assert not private, ("the engine is used through medsam_server.engine's public names "
                         "only (add the name to engine/__init__.py's _EXPORTS):\n"
                         + "\n".join(private))


def test_the_check_sees_a_planted_upward_import(tmp_path):
    # The premise of the check above: a function-level relative import upward is found.
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from ..cli.main import main\n    return main\n")
    found = imported_modules("medsam_server.engine.planted", planted)
    assert found == [(2, "medsam_server.cli.main")]
    assert RANK[layer(found[0][1])] > RANK["engine"]


def test_engine_public_names_resolve():
    import medsam_server.engine as engine

    for name in engine.__all__:
        assert getattr(engine, name) is not None, name
    with pytest.raises(AttributeError):
        engine.no_such_name  # noqa: B018


@pytest.mark.parametrize("root", ["server", "client", "MedSAMSegment"])
def test_no_module_above_500_lines(root):
    tree = Path(__file__).resolve().parents[1] / root
    sizes = {str(p.relative_to(tree)): len(p.read_text().splitlines())
             for p in tree.rglob("*.py")}
    assert sizes, f"no Python files under {root}"
    assert not {p: n for p, n in sizes.items() if n > MAX_LINES}
