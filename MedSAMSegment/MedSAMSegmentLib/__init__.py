"""MedSAMSegment's Slicer-side package.

Layers: pure logic (geometry, annotation, annotation_log, tasks, backend, settings,
server_session, install, panel_state), MRML logic (views, source_volume, labelmaps,
preview, editor, controller; slicer + vtk, no Qt) and the Qt glue (SegmentEditorEffect,
OptionsPanel, SettingsPanel, SlicerRuntime). Importing the package imports no Qt, so
everything but the glue runs under pytest on slicer-core. MedSAMSegment.py makes the
package attribute ``SegmentEditorEffect`` the effect class before registering it.
"""
