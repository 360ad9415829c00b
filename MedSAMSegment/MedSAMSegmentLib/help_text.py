"""The texts Slicer shows for the module and the effect, and the Python check (pure).

Kept out of the Qt glue so that a test can hold the effect's help against the controls the
options panel builds and the keys the effect handles (Testing/test_slicer_settings_flow.py).
"""

from __future__ import annotations

from collections.abc import Sequence

MIN_PYTHON = (3, 10)  # Slicer 5.10's; older Slicers run Python 3.9

MODULE_HELP = (
    "Draw a box on one slice and get the structure segmented through the whole volume by "
    "MedSAM2, then correct it and propagate again. Use it in the Segment Editor: effect "
    "<b>MedSAM2</b>. This panel sets up where the model runs (a local worker on this computer, "
    "or a team's server) and the model weights.")

LICENCES = (
    "The MedSAMSegment code is licensed Apache-2.0. The MedSAM2 model weights "
    "(<a href=\"https://huggingface.co/wanglab/MedSAM2\">wanglab/MedSAM2</a>, downloaded on "
    "first use, not bundled) are licensed "
    "<a href=\"https://creativecommons.org/licenses/by-sa/4.0/\">CC-BY-SA-4.0</a>; MedSAM2 is "
    "by Jun Ma, Bo Wang et al. (arXiv:2504.03600), built on Meta's SAM 2 (Apache-2.0).")


def effect_help() -> str:
    """The effect's help (rich text): each <b>name</b> is a control of the options panel, a
    mouse gesture or a key the effect handles."""
    return (
        "<html>Segment a structure through the whole volume with MedSAM2.<p><ul>"
        "<li><b>Box</b> mode, <b>left-drag</b> in a slice view: a box around the structure; "
        "its mask appears at once in the preview.</li>"
        "<li><b>+ Point</b> / <b>− Point</b> mode, <b>left-click</b>: add or remove a region "
        "on that slice.</li>"
        "<li><b>Propagate</b> (or <b>Propagate all segments</b>): segment the other slices; "
        "<b>Cancel</b> stops it within a slice.</li>"
        "<li>Correct any slice with a box or points (or Paint, then <b>Use this slice of the "
        "segment as the prompt</b>) and propagate again: only the changed range is recomputed. "
        "<b>Previous</b> / <b>Next</b> step through the review list, least confident slices "
        "first.</li>"
        "<li>On the 2D frames of a sequence browser: <b>Propagate through time</b>; <b>Undo "
        "apply through time</b> takes the last Apply back on every frame it wrote.</li>"
        "<li><b>Apply</b> (or <b>Enter</b>) writes the preview into the segment, honouring "
        "masking and overwrite settings; Undo restores it. <b>Apply all</b> does so for every "
        "segment; <b>Discard</b> forgets the preview and prompts.</li></ul>"
        "<b>Use view window</b> sends the volume again with the window the view shows; "
        "<b>Server and model settings…</b> opens the set-up. Clicks with Shift, Ctrl or Alt are "
        "left to Slicer.</html>")


def python_too_old(version: Sequence[int]) -> str | None:
    """Why the effect cannot be registered on Python ``version`` (sys.version_info), or None."""
    if tuple(version[:2]) >= MIN_PYTHON:
        return None
    return (f"MedSAMSegment needs Slicer 5.10 or newer (Python >= "
            f"{'.'.join(map(str, MIN_PYTHON))}); this Slicer has Python "
            f"{version[0]}.{version[1]}. The MedSAM2 effect is not registered.")
