"""The README and docs/ cannot rot: runnable commands run, every other ``medsam-server``
command names options that exist, links and anchors resolve, the README stays a front door.

Convention: a fenced block right after a line ``<!-- runnable -->`` is run line by line (in a
temporary folder, the venv's ``bin`` first on PATH) and each line must exit 0.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OLD_HEADINGS = ["Quick start", "Install in Slicer", "Use in Slicer", "MedSAM2 weights",
                "Command line", "Precision", "Evaluate a checkpoint on your own labelled data",
                "Batch annotation", "On a Ray cluster", "Service",
                "Run a shared server for your team", "Benchmarks", "Layout", "Tests"]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
RUNNABLE = re.compile(r"^<!-- runnable -->\n```[^\n]*\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
BIN = Path(sys.executable).parent
REPO_PATH = re.compile(r"(?<![\w/.-])((?:bench|scripts|Testing|examples|server|client"
                       r"|MedSAMSegment|Resources|\.ci)/[\w./-]*[\w/])")
BENCH = re.compile(r"(bench/\w+\.py)((?: --[a-z][a-z0-9-]*(?: [^\s`-][^\s`]*)?)*)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def commands_in_fences() -> list[tuple[str, str]]:
    """(file, command) for every ``medsam-server`` command in a fenced block, continuation
    lines (indented, or after a trailing backslash) joined to it, or in a code span."""
    found = []
    for path in DOCS:
        for block in FENCE.findall(path.read_text()):
            lines: list[str] = []
            for raw in block.splitlines():
                if lines and (raw.startswith((" ", "\t")) or lines[-1].endswith("\\")):
                    lines[-1] = lines[-1].rstrip("\\") + " " + raw.strip()
                else:
                    lines.append(raw.strip())
            found += [(path.name, line) for line in lines
                      if re.match(r"^(\S+=\S+ )*medsam-server \w", line)]
        # and every one named in running text, as a code span
        found += [(path.name, span) for span in
                  re.findall(r"`(medsam-server [a-z][^`]*)`", FENCE.sub("", path.read_text()))]
    return found


@functools.cache
def help_text(sub: str) -> str:
    out = subprocess.run([str(BIN / "medsam-server"), sub, "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, f"medsam-server {sub} --help failed: {out.stderr}"
    return out.stdout


def test_every_medsam_server_command_names_real_options():
    commands = commands_in_fences()
    assert len(commands) >= 20, f"the extraction found only {commands}"
    wrong = []
    for name, line in commands:
        words = line.split("medsam-server ", 1)[1].split()
        sub = words[0]
        if sub.startswith("-"):
            continue  # medsam-server --version / --help
        text = help_text(sub)
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join(words[1:])):
            if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text):
                wrong.append(f"{name}: `{line}`: {sub} has no {option}")
    assert not wrong, "\n".join(wrong)


def test_runnable_blocks_run(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MEDSAM2_CACHE_DIR": str(tmp_path / "cache")}
    ran = []
    for path in DOCS:
        for block in RUNNABLE.findall(path.read_text()):
            for command in filter(None, (c.strip() for c in block.splitlines())):
                out = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                                     capture_output=True, text=True, timeout=120)
                assert out.returncode == 0, f"{path.name}: `{command}` failed:\n{out.stderr}"
                assert (out.stdout + out.stderr).strip(), f"{path.name}: `{command}` said nothing"
                ran.append(command)
    assert len(ran) >= 5, f"only {ran} marked runnable"


def test_every_make_command_names_a_target():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = [(path.name, word) for path in DOCS for block in FENCE.findall(path.read_text())
             for word in re.findall(r"^\s*make ([a-z][\w-]*)", block, re.M)]
    assert len(named) >= 4, f"the extraction found only {named}"
    wrong = [f"{name}: make {word}" for name, word in named if word not in targets]
    assert not wrong, f"no such Makefile target: {wrong}"


def test_every_repository_path_named_exists():
    # paths in code spans are no links, so the link check does not see them
    named = [(path.name, m) for path in DOCS for m in REPO_PATH.findall(path.read_text())]
    assert len(named) >= 30, f"the extraction found only {named}"
    missing = sorted({f"{name}: {m}" for name, m in named if not (ROOT / m).exists()})
    assert not missing, f"no such file or folder: {missing}"


def test_every_bench_command_names_real_options():
    named = [(path.name, script, opts) for path in DOCS
             for script, opts in BENCH.findall(path.read_text())]
    assert len(named) >= 8, f"the extraction found only {named}"
    wrong = [f"{name}: {script} has no {option}" for name, script, opts in named
             for option in re.findall(r"--[a-z][a-z0-9-]*", opts)
             if f'"{option}"' not in (ROOT / script).read_text()]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_links_and_anchors_resolve(path: Path):
    broken = []
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{path.name}:\n" + "\n".join(broken)


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 12 * 1024
    texts = {m.group(1).lower() for m in re.finditer(r"\[([^\]]+)\]\([^)]+\)", readme)}
    missing = [h for h in OLD_HEADINGS if h.lower() not in texts]
    assert not missing, f"old README headings not linked from README.md: {missing}"
    guides = set(re.findall(r"\]\((docs/[\w-]+\.md)", readme))
    on_disk = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    # a guide joins the table once committed (an uncommitted draft is someone's work in progress)
    tracked = subprocess.run(["git", "ls-files", "docs/*.md"], cwd=ROOT, capture_output=True,
                             text=True)
    committed = set(tracked.stdout.split()) if tracked.returncode == 0 else on_disk
    assert committed, "no committed guide found under docs/"
    assert not committed - guides, \
        f"add {sorted(committed - guides)} to the README's Guides table"
    assert not guides - on_disk, f"the README lists {sorted(guides - on_disk)}, not in docs/"


def test_slug_matches_githubs_rules():
    # the premise of the anchor check, on headings of the kinds these docs use
    assert slug("Evaluate a checkpoint on your own labelled data") == \
        "evaluate-a-checkpoint-on-your-own-labelled-data"
    assert slug("Engine: stock SAM2 vs ours, fp32 and bf16") == \
        "engine-stock-sam2-vs-ours-fp32-and-bf16"
    assert slug("Whole `segment` processes") == "whole-segment-processes"
