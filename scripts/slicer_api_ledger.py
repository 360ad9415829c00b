"""What the Qt glue asks of Slicer, PythonQt, CTK, Qt and VTK, read from its source (AST).

``uses(path)`` lists every external name one glue file touches: dotted names from the
modules Slicer provides (``qt.QTimer``, ``slicer.util.selectModule``, ``vtk.vtkCommand.EnterEvent``),
signals connected by their string signature (``valueChanged(double)``: PythonQt connects
nothing, silently, when the signature is wrong), methods and properties used on objects
that are not ours (``.addOptionsWidget``, ``.GetSliceNode``, ``.wordWrap``), and the methods
a scripted class defines (``override SegmentEditorEffect.activate``: Slicer's C++ adaptor
calls some of them, the rest are our own). docs/slicer-api.json is the ledger these keys
must appear in; ``python scripts/slicer_api_ledger.py`` renders it into docs/slicer-api.md.
"""

from __future__ import annotations

import ast
import builtins
import gzip
import json
import re
import subprocess
import sys
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEDGER = REPO / "docs" / "slicer-api.json"
DOC = REPO / "docs" / "slicer-api.md"
GLUE = ("MedSAMSegment/MedSAMSegment.py",
        "MedSAMSegment/MedSAMSegmentLib/SegmentEditorEffect.py",
        "MedSAMSegment/MedSAMSegmentLib/OptionsPanel.py",
        "MedSAMSegment/MedSAMSegmentLib/SettingsPanel.py",
        "MedSAMSegment/MedSAMSegmentLib/BoxPipeline.py",
        "MedSAMSegment/MedSAMSegmentLib/SlicerRuntime.py",
        "MedSAMSegment/Testing/Python/MedSAMSegmentSelfTest.py")
# modules that exist only inside Slicer: every dotted name from them is Slicer's API
EXTERNAL_MODULES = {"qt", "ctk", "vtk", "slicer", "effects", "SampleData"}
# parameters and locals that always hold Slicer's objects: every attribute on them is external
EXTERNAL_RECEIVERS = {"scriptedEffect", "self.scriptedEffect", "viewWidget", "parent",
                      "callerInteractor", "callerViewNode", "sliceWidget", "interactor", "layout",
                      "self.layout", "editor", "editorNode", "segmentation", "volume", "node",
                      "sliceNode", "source", "mainWindow", "red", "instance", "m", "prop"}
# classes whose methods Slicer (not we) calls: their defs are overrides or our own helpers
SCRIPTED_BASES = {"AbstractScriptedSegmentEditorEffect", "ScriptedLoadableModule",
                  "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest"}
PYTHON_MODULES = {"np", "os", "sys", "time", "unittest", "tempfile", "subprocess", "importlib",
                  "logging", "json"}
# Python's own methods (dict.get, str.strip, Path.mkdir, Event.set, ...)
_PY = {name for t in (dict, list, str, tuple, set, bytes, int, float, Path, unittest.TestCase,
                      subprocess.CompletedProcess)
       for name in dir(t)} | set(dir(builtins)) | {"set", "mkdir", "parent", "loader",
                                                 "exec_module", "wasSuccessful", "run",
                                                 "loadTestsFromModule", "stderr"}


def own_names() -> set[str]:
    """Names our package defines (functions, classes, attributes, fields)."""
    names: set[str] = set()
    paths = [*(REPO / "MedSAMSegment" / "MedSAMSegmentLib").glob("*.py"),
             *(REPO / rel for rel in GLUE)]
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if isinstance(node.value, ast.Name) and node.value.id == "self":
                    names.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return names


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _callee(call: ast.Call) -> str | None:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


def _external_objects(tree: ast.AST) -> set[str]:
    """Expressions (``self.timer``, ``button``) assigned from a constructor of Slicer's modules:
    every attribute used on them is external even when we have a method of that name."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Call, ast.Name)):
            value = node.value.func if isinstance(node.value, ast.Call) else node.value
            name = _dotted(value) or ""
            if name.split(".")[0] in EXTERNAL_MODULES or name in EXTERNAL_RECEIVERS:
                for target in node.targets:
                    if (key := _dotted(target)) is not None:
                        out.add(key)
    return out


def uses(path: Path, own: set[str] | None = None) -> dict[str, list[int]]:
    """External keys used in one glue file -> the lines that use them."""
    own = own_names() if own is None else own
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            node.value.inner = True  # only the longest dotted name counts
    external = _external_objects(tree)
    imported = {alias.asname or alias.name for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0]
                in EXTERNAL_MODULES | {"SegmentEditorEffects"} for alias in node.names}
    found: dict[str, list[int]] = {}

    def add(key: str, line: int) -> None:
        found.setdefault(key, []).append(line)

    aliases = {"qSlicerSegmentationsEditorEffectsPythonQt": "effects"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and {_dotted(b) for b in node.bases} & SCRIPTED_BASES:
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    add(f"def {node.name}.{item.name}", item.lineno)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                EXTERNAL_MODULES | {"SegmentEditorEffects"}):
            for alias in node.names:
                add(f"{node.module}.{alias.name}", node.lineno)
        if isinstance(node, ast.Call) and _callee(node) in ("connect", "disconnect", "link"):
            # widget.connect("sig()", slot) or Connections.connect(widget, "sig()", slot)
            signature = next((a.value for a in node.args[:2] if isinstance(a, ast.Constant)
                              and isinstance(a.value, str)), None)
            if signature is not None:
                add(f"signal {signature}", node.lineno)
        if not isinstance(node, ast.Attribute):
            continue
        name = _dotted(node)
        root = name.split(".")[0] if name else None
        root = aliases.get(root, root)
        if root in PYTHON_MODULES:
            continue
        if (root in EXTERNAL_MODULES or root in imported) and name is not None:
            if not getattr(node, "inner", False):
                add(".".join([root, *name.split(".")[1:]]), node.lineno)
            continue
        receiver = _dotted(node.value)
        if node.attr in ("connect", "disconnect"):
            continue
        if receiver in external or receiver in EXTERNAL_RECEIVERS or (node.attr not in own and node.attr not in _PY):
            add(f".{node.attr}", node.lineno)
    return found


def all_uses() -> dict[str, dict[str, list[int]]]:
    """key -> {glue file: lines} over every glue file."""
    own = own_names()
    out: dict[str, dict[str, list[int]]] = {}
    for rel in GLUE:
        for key, lines in uses(REPO / rel, own).items():
            out.setdefault(key, {})[rel] = sorted(set(lines))
    return out


MIRRORS = {"Slicer": Path("/work/.mirror/Slicer+Slicer/repo"),
           "CTK": Path("/work/.mirror/commontk+CTK/repo"),
           "VTK": Path("/work/.mirror/Kitware+VTK/repo")}
SLICER_REFS = ("5.10", "5.12", "HEAD")  # release branches and main, as fetched
QT_INDEX = REPO.parent / "shared" / "tools" / "slicer_api" / "index.json.gz"
_COMMENT = re.compile(r"^\s*(//|\*|/\*|#)")


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={MIRRORS[repo]}", *args], capture_output=True,
                          text=True, check=True).stdout


def find_line(repo: str, ref: str, path: str, regex: str) -> tuple[int, str] | None:
    """The first non-comment line of PATH at REF matching REGEX (opened from the mirror)."""
    try:
        text = git(repo, "show", f"{ref}:{path}")
    except subprocess.CalledProcessError:
        return None
    pattern = re.compile(regex)
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.search(line) and not _COMMENT.match(line):
            return number, line.strip()
    return None


def qt_classes() -> dict:
    return json.load(gzip.open(QT_INDEX))["qt"]["classes"]


def qt_has(classes: dict, cls: str, member: str) -> bool:
    """Does Qt 5.15 (the checker's index) define CLS, and MEMBER on it or a base?"""
    seen, todo = set(), [cls]
    if cls == "Qt":  # the Qt namespace's enums
        return member in json.load(gzip.open(QT_INDEX))["qt"]["qt_namespace"]
    while todo:
        name = todo.pop()
        info = classes.get(name)
        if info is None or name in seen:
            continue
        seen.add(name)
        if not member or any(member in info.get(k, ()) for k in ("m", "p", "s", "sg", "e")):
            return True
        todo.extend(info.get("b", ()))
    return False


def pinned(slicer_commits: dict[str, str]) -> dict[str, dict[str, str]]:
    """The CTK and VTK each Slicer ref builds against, read from its SuperBuild.

    CTK: the ``Slicer_CTK_GIT_TAG`` commit of ``SuperBuild/External_CTK.cmake``. VTK: Slicer
    builds its fork (github.com/slicer/VTK) for the default ``Slicer_VTK_VERSION_MINOR``; the
    fork's tag comment ends in the upstream Kitware/VTK commit it is based on, which is what
    is read here (the fork's own few patches are not in any snapshot we can fetch).
    """
    ctk, vtk = {}, {}
    for ref, commit in slicer_commits.items():
        cmake = git("Slicer", "show", f"{commit}:SuperBuild/External_CTK.cmake")
        tag = re.search(r'Slicer_\$\{proj\}_GIT_TAG\s+"([0-9a-f]{40})"', cmake)
        top = git("Slicer", "show", f"{commit}:CMakeLists.txt")
        minor = re.search(r'set\(_default_vtk_minor_version "(\d+)"\)', top)
        vtk_cmake = git("Slicer", "show", f"{commit}:SuperBuild/External_VTK.cmake")
        base = re.search(rf'STREQUAL "9\.{minor.group(1) if minor else "?"}"\)\s*\n\s*set\(_git_tag '
                         r'"[0-9a-f]{40}"\) # slicer-v[\d.]+-[\d-]+-([0-9a-f]{7,})', vtk_cmake)
        if tag is None or base is None:
            raise SystemExit(f"Slicer {ref}: CTK or VTK pin not found in its SuperBuild")
        ctk[ref] = git("CTK", "rev-parse", tag.group(1)).strip()
        vtk[ref] = git("VTK", "rev-parse", base.group(1)).strip()
    return {"CTK": ctk, "VTK": vtk}


QT_HEADERS = Path("/usr/include/x86_64-linux-gnu/qt5")  # Debian's qtbase5-dev
QT_MODULES = ("QtCore", "QtGui", "QtWidgets")


def qt_version() -> str | None:
    config = QT_HEADERS / "QtCore" / "qconfig.h"
    found = re.search(r'#define QT_VERSION_STR "([\d.]+)"', config.read_text()) \
        if config.exists() else None
    return found.group(1) if found else None


def qt_header(cls: str) -> str | None:
    """QtWidgets/qtimer.h style path of CLS's header (Qt names headers after classes)."""
    name = "qnamespace.h" if cls == "Qt" else cls.lower() + ".h"
    return next((f"{m}/{name}" for m in QT_MODULES if (QT_HEADERS / m / name).exists()), None)


def qt_line(classes: dict, cls: str, member: str) -> tuple[str, int, str] | None:
    """Where Qt 5.15's headers declare CLS (or MEMBER on CLS or the base declaring it)."""
    if not member:  # the definition, not a forward declaration
        regexes = [rf"^class (Q_\w+_EXPORT )?{cls}\b(?!.*;\s*$)"]
    elif "(" in member:  # a signal: its declaration, e.g. ``void clicked(bool checked = false);``
        regexes = [rf"\bvoid {re.escape(member.split('(')[0])}\("]
    elif member[:1].isupper():  # an enum value
        regexes = [rf"(^\s*{member}\b\s*[,=}}]?|\benum\b.*[{{,]\s*{member}\b)"]
    else:  # a method declared (a return type first), else a property
        regexes = [rf"^\s*(?:[\w:<>,]+[\s*&]+)+{member}\s*\(",
                   rf"Q_PROPERTY\(\w+\*? {member}\b"]
    for regex in regexes:
        found = _qt_find(classes, cls, regex)
        if found is not None:
            return found
    return None


def _qt_find(classes: dict, cls: str, regex: str) -> tuple[str, int, str] | None:
    todo, seen = [cls], set()
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        path = qt_header(name)
        if path is not None:
            for number, line in enumerate((QT_HEADERS / path).read_text().splitlines(), 1):
                if re.search(regex, line) and not _COMMENT.match(line):
                    return path, number, line.strip()
        todo.extend(classes.get(name, {}).get("b", ()))
    return None


def build() -> dict:
    """Resolve every source in SOURCES against the mirrors; the ledger as JSON data."""
    from slicer_api_sources import SOURCES

    commits = {"Slicer": {ref: git("Slicer", "rev-parse", ref).strip() for ref in SLICER_REFS}}
    commits.update(pinned(commits["Slicer"]))
    classes = qt_classes()
    version = qt_version()
    if version is None:
        raise SystemExit(f"no Qt headers in {QT_HEADERS}: apt-get install qtbase5-dev")
    commits["Qt"] = {"5.15": version}
    entries = {}
    used = all_uses()
    unsourced = sorted(set(used) - set(SOURCES))
    if unsourced:
        raise SystemExit("no source in scripts/slicer_api_sources.py for: " + ", ".join(unsourced))
    for key, sources in sorted(SOURCES.items()):
        if key not in used:
            continue  # no longer used by the glue: left out of the ledger
        cited = []
        for repo, where, regex in sources:
            if repo in MIRRORS:
                found = {ref: find_line(repo, commit, where, regex)
                         for ref, commit in commits[repo].items()}
                head = found["HEAD"]
                if head is None:
                    raise SystemExit(f"{key}: /{regex}/ not found in {repo} {where}")
                cited.append({"source": repo, "path": where, "line": head[0], "text": head[1],
                              "regex": regex, "holds_for": [r for r, f in found.items() if f]})
            elif repo == "Qt":
                if not qt_has(classes, where, regex):
                    raise SystemExit(f"{key}: {where}.{regex} not in the Qt 5.15 index")
                found = qt_line(classes, where, regex)
                if found is None:
                    raise SystemExit(f"{key}: {where}.{regex} not found in the Qt headers")
                cited.append({"source": "Qt", "class": where, "member": regex,
                              "path": found[0], "line": found[1], "text": found[2]})
            else:
                cited.append({"source": "Python", "what": where})
        entries[key] = cited
    return {"commits": commits, "entries": entries}


def render(ledger: dict) -> str:
    """The ledger as the Markdown table in docs/slicer-api.md."""
    base = {"Slicer": "https://github.com/Slicer/Slicer/blob/{}/{}#L{}",
            "CTK": "https://github.com/commontk/CTK/blob/{}/{}#L{}",
            "VTK": "https://github.com/Kitware/VTK/blob/{}/{}#L{}"}
    rows = ["| used as | defined at (current) | declaration | holds for |", "|---|---|---|---|"]
    for key, sources in ledger["entries"].items():
        for src in sources:
            if src["source"] in base:
                commit = ledger["commits"][src["source"]]["HEAD"]
                url = base[src["source"]].format(commit, src["path"], src["line"])
                where = f"[{src['source']} {src['path']}:{src['line']}]({url})"
                text = src["text"].replace("|", "\\|")
                holds = ", ".join("main" if r == "HEAD" else r for r in src["holds_for"])
            elif src["source"] == "Qt":
                version = ledger["commits"]["Qt"]["5.15"]
                where = f"Qt {version} {src['path']}:{src['line']} ({src['class']})"
                text, holds = src["text"], "Qt 5.15"
            else:
                where, text, holds = src["what"], "", ""
            rows.append(f"| `{key}` | {where} | `{text}` | {holds} |" if text
                        else f"| `{key}` | {where} |  | {holds} |")
    return "\n".join(rows) + "\n"


BEGIN, END = "<!-- ledger: begin -->", "<!-- ledger: end -->"


def render_into_doc(ledger: dict) -> str:
    doc = DOC.read_text()
    head, rest = doc.split(BEGIN)
    return head + BEGIN + "\n" + render(ledger) + END + rest.split(END)[1]


if __name__ == "__main__":
    if sys.argv[1:] == ["--uses"]:
        for key, where in sorted(all_uses().items()):
            print(key, " ".join(f"{Path(f).name}:{','.join(map(str, ls))}" for f, ls in where.items()))
    elif sys.argv[1:] == ["--build"]:
        sys.path.insert(0, str(Path(__file__).parent))
        LEDGER.write_text(json.dumps(build(), indent=1) + "\n")
        DOC.write_text(render_into_doc(json.loads(LEDGER.read_text())))
    else:
        raise SystemExit("usage: slicer_api_ledger.py --uses | --build")
