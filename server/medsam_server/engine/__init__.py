"""The engine layer: the MedSAM2 network and its steps over arrays and tensors.

It knows tensors and numpy arrays, not files, HTTP or command lines; nothing here imports
from the layers above it (``io``, ``batch``, ``service``, ``cli``). The names below are its
public interface for those layers. They load lazily (PEP 562), so a caller that needs only
``Prompt`` or ``window_to_uint8`` (``segment --server``, the prompts-file reader) does not
import torch and sam2.

Modules: ``preprocess`` (windowing, slice → model input), ``prompts`` (box/points/mask and
their checks), ``objects`` (what to segment), ``postprocess`` (MedSAM2's mask clean-up),
``model`` (build and load the network), ``kernels`` (CPU fast paths), ``features`` (the
slice-feature cache), ``engine`` (the model steps), ``session`` (a volume, its objects and
propagation), ``undo`` (what an undo restores), ``pipeline`` (``segment``'s recipe).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module (in this package) that defines it
_EXPORTS = {
    "AXES": "preprocess", "DEFAULT_CT_WINDOW": "preprocess", "PreprocessError": "preprocess",
    "axis_index": "preprocess", "slice_shape": "preprocess", "window_to_uint8": "preprocess",
    "Prompt": "prompts", "PromptError": "prompts", "check_slice_prompt": "prompts",
    "DEFAULT_COLORS": "objects", "ObjectSpec": "objects",
    "add_object": "postprocess",
    "CheckpointError": "model", "DeviceError": "model", "write_random_checkpoint": "model",
    "DEFAULT_FEATURE_CACHE_BYTES": "engine", "Engine": "engine",
    "Session": "session", "SliceResult": "session",
    "segment_objects": "pipeline", "segment_phases": "phases",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
