"""The ledger of Slicer / CTK / Qt / VTK names the Qt glue uses (docs/slicer-api.json) keeps up
with the glue (read by AST), and each citation is the line it claims to be."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import slicer_api_ledger as ledger_tool  # noqa: E402
from slicer_api_sources import EFFECT_HOOKS, SECXX  # noqa: E402

HOW_TO_ADD = ("add it to SOURCES in scripts/slicer_api_sources.py (s(PATH, REGEX) for a file of "
              "Slicer's source, c(...) CTK, v(...) VTK, q(CLASS, MEMBER) Qt; an own method of a "
              "scripted class: py(...)) and run `.venv/bin/python scripts/slicer_api_ledger.py "
              "--build` (it opens the line in the Slicer/CTK/VTK mirrors and re-renders "
              "docs/slicer-api.md)")


@pytest.fixture(scope="module")
def ledger() -> dict:
    import json

    return json.loads(ledger_tool.LEDGER.read_text())


@pytest.fixture(scope="module")
def used() -> dict[str, dict[str, list[int]]]:
    return ledger_tool.all_uses()


def test_every_call_signal_and_override_of_the_glue_is_in_the_ledger(ledger: dict,
                                                                       used: dict) -> None:
    missing = [f"{file}:{lines[0]} uses `{key}`, which docs/slicer-api.json does not list"
               for key, where in sorted(used.items()) if key not in ledger["entries"]
               for file, lines in where.items()]
    assert not missing, "\n".join(missing) + "\nFor each: " + HOW_TO_ADD


def test_the_ledger_lists_nothing_the_glue_no_longer_uses(ledger: dict, used: dict) -> None:
    stale = sorted(set(ledger["entries"]) - set(used))
    assert not stale, (f"no longer used by the glue: {stale}; run "
                       "`.venv/bin/python scripts/slicer_api_ledger.py --build`")


def test_the_reader_finds_signals_names_methods_and_overrides(tmp_path: Path) -> None:
    glue = tmp_path / "glue.py"
    glue.write_text(
        "import qt\nimport slicer\nfrom SegmentEditorEffects import AbstractScriptedSegmentEditorEffect\n"
        "class E(AbstractScriptedSegmentEditorEffect):\n"
        "    def activate(self):\n"
        "        self.timer = qt.QTimer()\n"
        "        self.timer.connect('timeout()', self.tick)\n"
        "        self.timer.start()\n"
        "        self.scriptedEffect.cursorOff(None)\n"
        "        slicer.util.selectModule('X')\n"
        "        self.ensureController().pump()\n")
    found = ledger_tool.uses(glue, own={"ensureController", "pump", "start"})
    assert {"def E.activate", "signal timeout()", "qt.QTimer", ".cursorOff",
            "slicer.util.selectModule", ".start"} <= set(found)
    assert found["signal timeout()"] == [7]
    # our own methods are not Slicer's; ``start`` on a QTimer is, although we have one too
    assert ".pump" not in found and ".ensureController" not in found


def test_each_citation_is_the_line_it_claims(ledger: dict) -> None:
    checked = 0
    for key, sources in ledger["entries"].items():
        for src in sources:
            if src["source"] not in ledger_tool.MIRRORS:
                continue
            assert re.search(src["regex"], src["text"]), (key, src)
            mirror = ledger_tool.MIRRORS[src["source"]]
            if not mirror.exists():
                continue  # the line's text is kept in the ledger; re-opened where a mirror is
            commit = ledger["commits"][src["source"]]["HEAD"]
            text = ledger_tool.git(src["source"], "show", f"{commit}:{src['path']}")
            assert text.splitlines()[src["line"] - 1].strip() == src["text"], (key, src)
            checked += 1
    if checked == 0:
        pytest.skip("no Slicer/CTK/VTK mirror here: lines checked against the ledger's text only")


def test_every_citation_holds_for_5_10_5_12_and_main(ledger: dict) -> None:
    # Slicer at its branches; CTK and VTK at the commits each of those branches builds against
    for repo in ("Slicer", "CTK", "VTK"):
        assert set(ledger["commits"][repo]) == {"5.10", "5.12", "HEAD"}, repo
    partial = [(key, src["source"], src["path"], src["holds_for"])
               for key, sources in ledger["entries"].items() for src in sources
               if src["source"] in ledger_tool.MIRRORS
               and set(src["holds_for"]) != {"5.10", "5.12", "HEAD"}]
    assert not partial, f"not defined in every supported Slicer: {partial}"


def test_ctk_and_vtk_are_read_at_the_commits_slicer_pins(ledger: dict) -> None:
    if not ledger_tool.MIRRORS["Slicer"].exists():
        pytest.skip("no Slicer mirror here: the pins are checked where one is")
    assert ledger_tool.pinned(ledger["commits"]["Slicer"]) == {
        "CTK": ledger["commits"]["CTK"], "VTK": ledger["commits"]["VTK"]}


def test_the_doc_names_every_commit_read(ledger: dict) -> None:
    doc = ledger_tool.DOC.read_text()
    sources = doc.split("## Sources read")[1].split("\n## ")[0]
    missing = [(repo, ref, commit) for repo, refs in ledger["commits"].items()
               for ref, commit in refs.items() if f"`{commit}`" not in sources]
    assert not missing, f"docs/slicer-api.md 'Sources read' does not name: {missing}"


def test_each_qt_citation_is_the_header_line_it_claims(ledger: dict) -> None:
    qt = [src for sources in ledger["entries"].values() for src in sources
          if src["source"] == "Qt"]
    assert qt and all(src["path"] and src["line"] > 0 and src["text"] for src in qt)
    if ledger_tool.qt_version() is None:
        pytest.skip("no Qt headers here (apt-get install qtbase5-dev): text kept in the ledger")
    assert ledger["commits"]["Qt"]["5.15"] == ledger_tool.qt_version()
    wrong = [(src["class"], src["member"], src["path"], src["line"]) for src in qt
             if (ledger_tool.QT_HEADERS / src["path"]).read_text().splitlines()[src["line"] - 1]
             .strip() != src["text"]]
    assert not wrong, wrong
    # the declaration is of that member (or the class itself), not a mention of it elsewhere
    named = [src for src in qt if (src["member"].split("(")[0] or src["class"]) not in src["text"]]
    assert not named, named


def test_qt_names_exist_in_qt_5_15(ledger: dict) -> None:
    classes = ledger_tool.qt_classes()
    qt = [(key, src) for key, sources in ledger["entries"].items() for src in sources
          if src["source"] == "Qt"]
    assert len(qt) > 50
    for key, src in qt:
        assert ledger_tool.qt_has(classes, src["class"], src["member"]), key
    assert not ledger_tool.qt_has(classes, "QTimer", "timedOut()")  # the check can fail


def _normalized(declaration: str) -> str:
    """``void valueChanged(const QString& path);`` -> ``valueChanged(QString)`` (Qt's
    normalized signature, the form PythonQt's connect matches)."""
    name, params = re.search(r"(\w+)\((.*)\)", declaration).groups()
    types = []
    for param in filter(None, (p.strip() for p in params.split(","))):
        param = re.sub(r"\bconst\b|&", " ", param.split("=")[0]).split()
        types.append(param[0] if len(param) == 1 else " ".join(param[:-1]))
    return f"{name}({','.join(types)})"


def test_each_connected_signal_is_declared_with_that_exact_signature(ledger: dict) -> None:
    assert _normalized("void currentPathChanged(const QString& path);") == \
        "currentPathChanged(QString)"
    signals = {k: v for k, v in ledger["entries"].items() if k.startswith("signal ")}
    assert "signal valueChanged(double)" in signals
    for key, sources in signals.items():
        signature = key.removeprefix("signal ")
        for src in sources:
            if src["source"] == "Qt":
                info = ledger_tool.qt_classes()[src["class"]]
                assert signature == src["member"] and signature in info["sg"], key
            else:
                assert _normalized(src["text"]) == signature, (key, src["text"])


def test_overrides_are_the_hooks_the_scripted_effect_adaptor_calls(ledger: dict) -> None:
    defs = {k.split(".", 1)[1]: v for k, v in ledger["entries"].items()
            if k.startswith("def SegmentEditorEffect.")}
    for name, sources in defs.items():
        (src,) = sources
        if name in EFFECT_HOOKS:
            assert src["path"] == SECXX and f'"{name}"' in src["text"], name
        elif name != "__init__":
            # a helper named like a hook would be called by Slicer itself
            assert src["source"] == "Python", name
    assert {"activate", "deactivate", "setupOptionsFrame", "processInteractionEvents",
            "cleanup"} <= set(defs)
    mirror = ledger_tool.MIRRORS["Slicer"]
    if mirror.exists():  # the hook list is the adaptor's, read from its source
        commit = ledger["commits"]["Slicer"]["HEAD"]
        declared = set(re.findall(r'declareMethod\(Self::\w+, "(\w+)"\)',
                                  ledger_tool.git("Slicer", "show", f"{commit}:{SECXX}")))
        assert set(EFFECT_HOOKS) <= declared
        helpers = {n for n in defs if n not in EFFECT_HOOKS and n != "__init__"}
        assert not helpers & declared


def test_process_interaction_events_returns_a_bool_on_every_path() -> None:
    # qSlicerSegmentEditorScriptedEffect.cxx: a non-bool return is a warning and "not handled"
    tree = ast.parse((REPO / ledger_tool.GLUE[1]).read_text())
    method = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                  and n.name == "processInteractionEvents")
    returns = [n.value for n in ast.walk(method) if isinstance(n, ast.Return)]
    assert returns and all(isinstance(v, ast.Constant) and isinstance(v.value, bool)
                           for v in returns)
    assert isinstance(method.body[-1], ast.Return)


def test_the_doc_is_rendered_from_the_ledger(ledger: dict) -> None:
    doc = ledger_tool.DOC.read_text()
    table = doc.split(ledger_tool.BEGIN)[1].split(ledger_tool.END)[0]
    assert table.strip() == ledger_tool.render(ledger).strip(), (
        "docs/slicer-api.md is not the ledger: run "
        "`.venv/bin/python scripts/slicer_api_ledger.py --build`")


def _method(path: Path, cls: str, name: str) -> ast.FunctionDef:
    tree = ast.parse(path.read_text())
    klass = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return next(n for n in klass.body if isinstance(n, ast.FunctionDef) and n.name == name)


def _calls(node: ast.AST) -> set[str]:
    return {ast.unparse(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}


def test_cleanup_disconnects_every_signal_the_panels_connected() -> None:
    # AbstractScriptedSegmentEditorEffect.cleanup: "disconnect any subclass-specific signals
    # and slots" (Slicer issue 7392); a connection left holds the effect and its controller
    lib = REPO / "MedSAMSegment" / "MedSAMSegmentLib"
    for name in ("OptionsPanel.py", "SettingsPanel.py"):
        tree = ast.parse((lib / name).read_text())
        raw = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
               and isinstance(n.func, ast.Attribute) and n.func.attr == "connect"
               and ast.unparse(n.func.value) != "self.connections"]
        assert not raw, f"{name}:{raw}: connect through self.connections (link), or cleanup leaks it"
    assert "self.panel.close" in _calls(_method(lib / "SegmentEditorEffect.py",
                                                "SegmentEditorEffect", "cleanup"))
    assert "self.connections.disconnect_all" in _calls(_method(lib / "OptionsPanel.py",
                                                               "OptionsPanel", "close"))
    assert "self.connections.disconnect_all" in _calls(_method(lib / "SettingsPanel.py",
                                                               "SettingsPanel", "cleanup"))
