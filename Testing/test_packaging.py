"""The extension's CMake files install everything the Slicer side imports at run time.

Slicer's SDK cannot be installed here, so `Testing/cmake_stub/` stands in for it (a
"Slicer" CMake package re-implementing slicerMacroBuildScriptedModule,
ctkMacroCompilePythonScript and slicer_add_python_unittest with the real argument
handling and copy rules). The extension is configured, built and installed against it
into a temporary folder, and the installed tree is checked:

- every file under MedSAMSegment/ (bar CMake files; the self-test included) and every
  file of client/medsam_client is installed, identical to its source;
- the server bundle the local-worker installer pip-installs holds exactly what setuptools
  would package from client/ (medsam-client) and server/ (medsam-server, plus the sam2 pin
  file), each in its folder as in git;
- every module reachable by import from the installed Slicer-side code is installed,
  Python's stdlib, or provided by Slicer's Python; torch, sam2 and fastapi never are;
- MedSAMSegment.s4ext says what the top-level CMakeLists.txt says.
"""

from __future__ import annotations

import ast
import filecmp
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from setuptools.config.pyprojecttoml import read_configuration

REPO = Path(__file__).resolve().parents[1]
STUB = REPO / "Testing" / "cmake_stub"
MODULE_SOURCE = REPO / "MedSAMSegment"
SERVER_SOURCE = REPO / "server"
CLIENT_SOURCE = REPO / "client"
MODULE = "MedSAMSegment"
LIB = "MedSAMSegmentLib"
SELF_TEST = "MedSAMSegmentSelfTest"
TESTS = "Testing/Python"  # in MedSAMSegment/ and in qt-scripted-modules alike
BUNDLE = f"{LIB}/server_bundle"

# Top-level modules Slicer's own Python provides to scripted modules. Nothing else may be
# imported unless this extension installs it.
SLICER_PROVIDED = {
    "slicer": "Slicer's Python package (slicer.util, ScriptedLoadableModule, MRML classes)",
    "qt": "PythonQt's Qt bindings, Slicer's GUI toolkit",
    "ctk": "CTK widgets, PythonQt-wrapped, part of every Slicer",
    "vtk": "VTK as built into Slicer (vtk.util.numpy_support included)",
    "numpy": "bundled with Slicer's Python (slicer.util.arrayFromVolume returns numpy)",
    "requests": "bundled with Slicer's Python (the extensions manager uses it)",
    "SegmentEditorEffects": "Slicer's scripted effect base classes (Segmentations module)",
    "qSlicerSegmentationsEditorEffectsPythonQt": "C++ Segment Editor effects, PythonQt-wrapped",
    "vtkSegmentationCorePython": "Slicer's segmentation core (vtkOrientedImageData, ...)",
    "SampleData": "Slicer's SampleData module, for the self-test's data",
}
# Worker-side only: in the Slicer process they are absent (or a multi-GB surprise).
FORBIDDEN = ("torch", "sam2", "fastapi", "uvicorn", "medsam_server")
TRY_NODES = (ast.Try, *([ast.TryStar] if hasattr(ast, "TryStar") else []))  # 3.11+


@dataclass(frozen=True)
class Configured:
    build: Path
    records: Path  # what the stub recorded (Testing/cmake_stub/UseSlicer.cmake)

    def layout(self) -> dict[str, str]:
        return parse_keyword_lines(self.records / "layout.txt")


@dataclass(frozen=True)
class Installed:
    configured: Configured
    install: Path

    @property
    def scripted(self) -> Path:
        """<prefix>/lib/Slicer-X.Y/qt-scripted-modules: where Slicer finds the modules."""
        return self.install / self.configured.layout()["install_qtscriptedmodules_lib_dir"]

    @property
    def scripted_build(self) -> Path:
        return self.configured.build / self.configured.layout()["qtscriptedmodules_lib_dir"]


def run(command: list[str], what: str) -> None:
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        output = (proc.stderr.strip() or proc.stdout.strip())[-6000:]
        pytest.fail(f"{what} failed ({' '.join(command)}):\n{output}", pytrace=False)


def configure(source: Path, build: Path) -> Configured:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed: the CMake packaging cannot be checked")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run(["cmake", "-S", str(source), "-B", str(build), f"-DSlicer_DIR={STUB}", *generator],
        "configuring against the stub Slicer SDK")
    return Configured(build, build / "slicer_stub")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("packaging")
    configured = configure(REPO, work / "build")
    run(["cmake", "--build", str(configured.build)], "building")
    run(["cmake", "--install", str(configured.build), "--prefix", str(work / "install")],
        "installing")
    return Installed(configured, work / "install")


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory) -> Configured:
    """Only the top-level CMakeLists.txt evaluated (the module folder left empty), so the
    extension metadata is checked whatever the state of the module's files."""
    work = tmp_path_factory.mktemp("metadata")
    source = work / "source"
    (source / MODULE).mkdir(parents=True)
    for path in REPO.iterdir():
        if path.is_file():
            shutil.copy2(path, source / path.name)
    (source / MODULE / "CMakeLists.txt").write_text("")
    return configure(source, work / "build")


def files_under(root: Path) -> set[str]:
    """Relative paths of the files under root, without Python caches."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def assert_same_content(pairs: list[tuple[Path, Path]]) -> None:
    differ = [str(b) for a, b in pairs if not filecmp.cmp(a, b, shallow=False)]
    assert not differ, f"installed copies differ from their sources: {differ}"


# --------------------------------------------------------------------------- files


def test_every_file_of_the_module_is_installed(installed: Installed) -> None:
    def ships(rel: str) -> bool:
        # Of Testing/, only the Python the self-test runs ships; no CMake file does.
        if rel.endswith((".pyc", "CMakeLists.txt")):
            return False
        return not rel.startswith("Testing/") or (rel.startswith(f"{TESTS}/")
                                                  and rel.endswith(".py"))

    expected = {rel for rel in files_under(MODULE_SOURCE) if ships(rel)}
    missing = sorted(expected - files_under(installed.scripted))
    assert not missing, (
        f"not installed (list them in {MODULE}/CMakeLists.txt, SCRIPTS or RESOURCES of "
        f"slicerMacroBuildScriptedModule: a file not listed is not installed): {missing}")
    assert_same_content([(MODULE_SOURCE / rel, installed.scripted / rel) for rel in expected])


def test_self_test_is_installed_and_registered(installed: Installed) -> None:
    # MedSAMSegment.py's runTest loads it from Testing/Python beside itself.
    assert (installed.scripted / TESTS / f"{SELF_TEST}.py").is_file()
    tests = parse_keyword_lines(installed.configured.records / "python_tests.txt", sep="\t")
    assert f"py_{SELF_TEST}" in tests
    assert f"py_nomainwindow_qSlicer{MODULE}ModuleGenericTest" in tests


def test_client_package_is_installed_beside_the_module(installed: Installed) -> None:
    client = CLIENT_SOURCE / "medsam_client"
    expected = {rel for rel in files_under(client) if rel.endswith(".py")}
    missing = sorted(expected - files_under(installed.scripted / "medsam_client"))
    assert not missing, (f"client/medsam_client files not installed "
                         f"(MEDSAM_CLIENT_PYTHON_SCRIPTS in {MODULE}/CMakeLists.txt): {missing}")
    assert_same_content([(client / rel, installed.scripted / "medsam_client" / rel)
                         for rel in expected])


def pip_payload(source: Path, extra: tuple[str, ...] = ()) -> set[str]:
    """What `pip install <source>/` builds from: pyproject.toml, its readme, the modules of
    the packages setuptools discovers and their package data (include-package-data adds
    nothing: no MANIFEST.in), plus ``extra`` files the installer reads."""
    config = read_configuration(source / "pyproject.toml", expand=True)  # runs discovery
    setuptools_cfg = config["tool"]["setuptools"]
    readme = config["project"]["readme"]
    readme = readme["file"] if isinstance(readme, dict) else readme
    files = {"pyproject.toml", readme, *extra}
    package_data = setuptools_cfg.get("package-data", {})
    for package in setuptools_cfg["packages"]:
        folder = source / package.replace(".", "/")
        files |= {p.relative_to(source).as_posix() for p in folder.glob("*.py")}
        for pattern in [*package_data.get(package, ()), *package_data.get("*", ())]:
            files |= {p.relative_to(source).as_posix() for p in folder.glob(pattern)
                      if p.is_file()}
    return files


def test_server_bundle_holds_what_pip_needs(installed: Installed) -> None:
    server = pip_payload(SERVER_SOURCE, extra=("requirements-sam2.txt",))
    client = pip_payload(CLIENT_SOURCE)
    assert any(rel.endswith(".yaml") for rel in server)  # the model config is package data
    assert not any(rel.startswith("medsam_client/") for rel in server)  # one copy: the client's
    assert "medsam_client/protocol.py" in client
    expected = {f"server/{rel}" for rel in server} | {f"client/{rel}" for rel in client}
    bundle = files_under(installed.scripted / BUNDLE)
    assert not expected - bundle, (
        f"missing from {BUNDLE} (SERVER_BUNDLE_RESOURCES in {MODULE}/CMakeLists.txt): "
        f"{sorted(expected - bundle)}")
    assert not bundle - expected, f"not part of either package: {sorted(bundle - expected)}"
    assert_same_content([(REPO / rel, installed.scripted / BUNDLE / rel) for rel in expected])


def test_install_tree_is_the_build_tree(installed: Installed) -> None:
    """Slicer runs from both: the build tree for developers, the install tree in packages."""
    assert files_under(installed.scripted) == files_under(installed.scripted_build)
    outside = files_under(installed.install) - {
        f"{installed.scripted.relative_to(installed.install).as_posix()}/{rel}"
        for rel in files_under(installed.scripted)}
    assert not outside, f"installed outside the scripted-modules folder: {sorted(outside)}"


def test_top_level_scripts_are_loadable_modules(installed: Installed) -> None:
    """Slicer loads every .py at the top of qt-scripted-modules as a module and instantiates
    the class named like the file (qSlicerScriptedLoadableModule::setPythonSource)."""
    for script in sorted(installed.scripted.glob("*.py")):
        tree = ast.parse(script.read_text(encoding="utf-8"), filename=str(script))
        classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
        assert script.stem in classes, (
            f"{script.name} is loaded by Slicer as a module but defines no class {script.stem}")


# --------------------------------------------------------------------------- imports


@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name
    names: tuple[str, ...]  # for `from module import a, b`; () for `import module`
    where: str  # file:line, for messages
    optional: bool  # guarded by `except ImportError` or only under TYPE_CHECKING


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    caught = handler.type
    names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
               for n in names)


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imports_in(path: Path, module: str, is_package: bool, root: Path) -> list[Import]:
    """Every import of a file, at any depth (functions included), made absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[Import] = []
    package = module if is_package else module.rpartition(".")[0]
    rel = path.relative_to(root).as_posix()

    def absolute(name: str | None, level: int) -> str:
        if level == 0:
            return name or ""
        parts = package.split(".") if package else []
        if level - 1 > len(parts) or not parts:
            raise AssertionError(f"{rel}: relative import beyond the top-level package")
        base = parts[: len(parts) - (level - 1)]
        return ".".join(base + ([name] if name else []))

    def visit(node: ast.AST, optional: bool) -> None:
        where = f"{rel}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, (), where, optional) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names = tuple(a.name for a in node.names)
            found.append(Import(absolute(node.module, node.level), names, where, optional))
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "__import__"))):
            found.append(Import(node.args[0].value, (), where, optional))
        if isinstance(node, TRY_NODES):
            guarded = optional or any(_catches_import_error(h) for h in node.handlers)
            for child in node.body:
                visit(child, guarded)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, optional)
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, optional)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(tree, False)
    return found


def find_installed(root: Path, module: str) -> tuple[Path, bool] | None:
    """(file, is_package) of an importable module under root, or None."""
    path = root.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py", True
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py"), False
    return None


def top_level_names(path: Path) -> tuple[set[str], bool]:
    """Names a module binds at import time, and whether it star-imports (then: anything)."""
    names: set[str] = set()
    star = False

    def visit(body: list[ast.stmt]) -> None:
        nonlocal star
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    star |= alias.name == "*"
                    names.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, (ast.If, ast.With, *TRY_NODES)):
                visit(node.body)
                for extra in ("orelse", "finalbody"):
                    visit(getattr(node, extra, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return names, star


def module_of(root: Path, path: Path) -> tuple[str, bool]:
    """(dotted module name, is_package) of an installed file. The self-test files are
    loaded by path (spec_from_file_location), as top-level modules."""
    if path.relative_to(root).as_posix().startswith(f"{TESTS}/"):
        return path.stem, False
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def import_closure(root: Path, starts: list[Path]) -> Iterator[tuple[Import, str | None]]:
    """Walk the imports from the start files through every installed module they reach.
    Yields each import with a problem (a message) or None."""
    queue = [(path, *module_of(root, path)) for path in starts]
    seen = {module for _, module, _ in queue}
    while queue:
        path, module, is_package = queue.pop()
        for imp in imports_in(path, module, is_package, root):
            top = imp.module.split(".")[0]
            if top in FORBIDDEN:
                yield imp, f"imports {imp.module}, which only the worker's environment has"
                continue
            if imp.optional:
                yield imp, None
                continue
            if find_installed(root, top) is None:
                if top in sys.stdlib_module_names or top in SLICER_PROVIDED:
                    yield imp, None
                else:
                    yield imp, (f"imports {imp.module}: not installed by the CMake files, not "
                                "stdlib, not in Slicer's Python (SLICER_PROVIDED)")
                continue
            # An installed package: each level must be installed, and each `from X import n`
            # must name a submodule or something X's __init__ binds.
            parts = imp.module.split(".")
            reached = [".".join(parts[: i + 1]) for i in range(len(parts))]
            for name in imp.names:
                target = find_installed(root, imp.module)
                if name != "*" and target is not None and target[1]:
                    if find_installed(root, f"{imp.module}.{name}") is not None:
                        reached.append(f"{imp.module}.{name}")
                    else:
                        bound, star = top_level_names(target[0])
                        if name not in bound and not star:
                            yield imp, (f"imports {name} from {imp.module}: neither an "
                                        "installed submodule nor defined in its __init__.py")
            problem = None
            for dotted in reached:
                found = find_installed(root, dotted)
                if found is None:
                    problem = f"imports {dotted}, which is not installed"
                    break
                if dotted not in seen:
                    seen.add(dotted)
                    queue.append((found[0], dotted, found[1]))
            yield imp, problem


def test_slicer_side_imports_are_installed(installed: Installed) -> None:
    root = installed.scripted
    assert (root / f"{MODULE}.py").is_file(), f"{MODULE}.py is not installed"
    starts = [root / f"{MODULE}.py", *sorted((root / LIB).glob("*.py")),
              *sorted((root / TESTS).glob("*.py"))]
    results = list(import_closure(root, starts))
    problems = [f"{imp.where}: {msg}" for imp, msg in results if msg]
    assert not problems, "\n".join(problems)
    # Sanity: the walk did reach the client package through the module's imports.
    reached = {imp.module.split(".")[0] for imp, _ in results}
    assert "medsam_client" in reached


def test_closure_check_catches_what_it_should(tmp_path: Path) -> None:
    """The import walk itself, on a made-up installed tree."""
    lib = tmp_path / LIB
    lib.mkdir()
    (lib / "__init__.py").write_text("from .a import A\n")
    (lib / "a.py").write_text(
        "import os\nimport numpy\nfrom . import b\n"
        "try:\n    import zstandard\nexcept ImportError:\n    zstandard = None\n"
        "def f():\n    from .missing import x\n    import torch\n")
    (lib / "b.py").write_text("from MedSAMSegmentLib import A, nothing\nimport somewheel\n")
    results = list(import_closure(tmp_path, [lib / "a.py"]))
    problems = sorted(msg for _, msg in results if msg)
    assert problems == [
        "imports MedSAMSegmentLib.missing, which is not installed",
        "imports nothing from MedSAMSegmentLib: neither an installed submodule nor "
        "defined in its __init__.py",
        "imports somewheel: not installed by the CMake files, not stdlib, not in Slicer's "
        "Python (SLICER_PROVIDED)",
        "imports torch, which only the worker's environment has",
    ]


# --------------------------------------------------------------------------- metadata


def parse_keyword_lines(path: Path, sep: str | None = None) -> dict[str, str]:
    """`keyword value` lines (the .s4ext format: first token, then the rest of the line)."""
    fields = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(sep or " ")
            fields[key] = value.strip()
    return fields


def test_s4ext_agrees_with_cmake(metadata: Configured) -> None:
    committed = parse_keyword_lines(REPO / f"{MODULE}.s4ext")
    generated = parse_keyword_lines(metadata.records / f"{MODULE}.s4ext")
    layout = metadata.layout()
    assert layout["defaulted_metadata"] == "", (
        f"EXTENSION_* left to Slicer's defaults in CMakeLists.txt: {layout['defaulted_metadata']}")
    differ = {key: (committed.get(key), value) for key, value in generated.items()
              if committed.get(key) != value}
    assert not differ, f".s4ext vs CMakeLists.txt (s4ext, cmake): {differ}"

    homepage = committed["homepage"]
    assert homepage == "https://github.com/medsamsegment/MedSAMSegment"
    assert committed["category"] == "Segmentation"
    assert committed["scm"] == "git"
    assert committed["scmurl"] in (homepage, homepage + ".git")
    assert committed["scmrevision"]
    description = committed["description"]
    for needle in ("Apache-2.0", "CC-BY-SA-4.0", "wanglab/MedSAM2", "not bundled"):
        assert needle in description, f"the description does not mention {needle!r}"

    raw = homepage.replace("https://github.com/", "https://raw.githubusercontent.com/")
    branch = committed["scmrevision"]
    icon = committed["iconurl"].removeprefix(f"{raw}/{branch}/")
    assert icon != committed["iconurl"], "iconurl is not a raw URL of this repository"
    assert (REPO / icon).is_file(), f"iconurl names {icon}, which is not in the repository"
    for url in committed["screenshoturls"].split():
        assert url.startswith(f"{raw}/{branch}/Resources/Screenshots/"), url


def test_screenshots_exist() -> None:
    urls = parse_keyword_lines(REPO / f"{MODULE}.s4ext")["screenshoturls"].split()
    missing = [u.split("/main/", 1)[1] for u in urls
               if not (REPO / u.split("/main/", 1)[1]).is_file()]
    if missing:
        pytest.skip(f"README screenshots not in the repository yet: {missing}")
