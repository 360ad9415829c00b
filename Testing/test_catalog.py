"""The ExtensionsIndex catalog entry (MedSAMSegment.json) is valid against Slicer's own schema
(../shared/tools/slicer_schemas, an unchanged copy from Slicer's repository), and the
.s4ext and the top-level CMake metadata agree with it; icon and screenshot URLs name files
that exist in this repository."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = (ROOT.parent / "shared" / "tools" / "slicer_schemas"
          / "slicer-extension-catalog-entry-schema-v1.0.2.json")
RAW = "https://raw.githubusercontent.com/medsamsegment/MedSAMSegment/main/"


@pytest.fixture(scope="module")
def entry() -> dict:
    return json.loads((ROOT / "MedSAMSegment.json").read_text())


@pytest.fixture(scope="module")
def s4ext() -> dict[str, str]:
    fields = {}
    for line in (ROOT / "MedSAMSegment.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    return fields


@pytest.fixture(scope="module")
def cmake() -> dict[str, str]:
    text = (ROOT / "CMakeLists.txt").read_text().replace("\\\n", "")
    return {k: v for k, v in re.findall(r'set\((EXTENSION_\w+) "?([^")]*)"?\)', text)}


def test_entry_is_valid_against_slicers_schema(entry):
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.exists():
        pytest.skip(f"{SCHEMA} is absent (expected ../shared beside the repo)")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(entry, schema)
    assert entry["$schema"] == schema["$id"]
    # the premise: the schema really constrains (an unknown key and a bad tier are refused)
    for bad in ({**entry, "homepage": "x"}, {**entry, "tier": 7}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_s4ext_and_cmake_agree_with_the_entry(entry, s4ext, cmake):
    assert s4ext["scmurl"] == entry["scm_url"] and s4ext["scm"] == entry.get("scm_type", "git")
    assert s4ext["scmrevision"] == entry["scm_revision"]
    assert s4ext["category"] == entry["category"] == cmake["EXTENSION_CATEGORY"]
    assert s4ext["build_subdirectory"] == entry["build_subdirectory"] \
        == cmake["EXTENSION_BUILD_SUBDIRECTORY"]
    assert int(s4ext["tier"]) == entry["tier"] == int(cmake["EXTENSION_TIER"])
    depends = [] if s4ext["depends"] == "NA" else s4ext["depends"].split()
    assert depends == entry["build_dependencies"]
    assert cmake["EXTENSION_DEPENDS"] == (s4ext["depends"] or "NA")
    assert entry["scm_url"].removesuffix(".git") == s4ext["homepage"] \
        == cmake["EXTENSION_HOMEPAGE"]


def test_icon_and_screenshot_urls_name_files_here(s4ext, cmake):
    urls = [s4ext["iconurl"], *s4ext["screenshoturls"].split(),
            cmake["EXTENSION_ICONURL"], *cmake["EXTENSION_SCREENSHOTURLS"].split()]
    assert len(urls) == 6
    for url in urls:
        assert url.startswith(RAW), url
        assert (ROOT / url.removeprefix(RAW)).is_file(), f"{url}: no such file in the repo"
