"""MedSAMSegment's Slicer-side package.

Layers: pure logic (geometry, annotation, annotation_log, tasks, focus, backend, settings,
settings_flow, help_text, server_session, install, worker_tasks, panel_state, panel_view,
interaction, connections, provenance, time_frames), MRML logic (views, source_volume,
labelmaps, preview, editor, controller, time_sequence, time_controller; slicer + vtk, no
Qt) and the Qt glue (SegmentEditorEffect, OptionsPanel, SettingsPanel, BoxPipeline,
SlicerRuntime). Importing the package imports no Qt, so
everything but the glue runs under pytest on slicer-core. MedSAMSegment.py makes the
package attribute ``SegmentEditorEffect`` the effect class before registering it.
"""

import importlib.util
import logging
import os
import sys

# An installed extension has medsam_client beside this package (the CMake build copies it
# from client/). Run from a git checkout (Extension Wizard / additional module path), it is
# still in the checkout's client/ folder: put that on sys.path, and say so.
if importlib.util.find_spec("medsam_client") is None:
    _client = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "client"))
    if os.path.isfile(os.path.join(_client, "medsam_client", "__init__.py")):
        sys.path.append(_client)
        logging.getLogger(__name__).info("MedSAMSegment runs from a source checkout: "
                                         "using medsam_client from %s", _client)
