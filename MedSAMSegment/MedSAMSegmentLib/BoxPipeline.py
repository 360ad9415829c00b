"""What the effect draws in one slice view: the box being dragged and the prompt points.

VTK only (no Qt), like SegmentEditorDrawEffect's DrawPipeline: geometry is kept in
RAS and mapped to the view's XY through the slice node every time the view changes
(pan, zoom, slice), so the box stays on the anatomy. It is shown only while the view
shows the slice it was drawn on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import vtk

BOX_COLOR = (1.0, 0.85, 0.0)  # yellow, like Slicer's Draw effect
POSITIVE_COLOR = (0.2, 0.9, 0.2)
NEGATIVE_COLOR = (0.95, 0.2, 0.2)


class BoxPipeline:
    """2D actors for one slice view; add ``actors()`` to the view's renderer."""

    def __init__(self, slice_node: object) -> None:
        self.slice_node = slice_node
        self.box_ras: list[np.ndarray] = []  # 4 corners
        self.points_ras: list[tuple[np.ndarray, bool]] = []
        self._plane: tuple[np.ndarray, float] | None = None  # (normal, offset) drawn on

        self.box_points = vtk.vtkPoints()
        self.box_poly = vtk.vtkPolyData()
        self.box_poly.SetPoints(self.box_points)
        lines = vtk.vtkCellArray()
        lines.InsertNextCell(5)
        for i in (0, 1, 2, 3, 0):
            lines.InsertCellPoint(i)
        self.box_poly.SetLines(lines)
        self.box_points.SetNumberOfPoints(4)
        mapper = vtk.vtkPolyDataMapper2D()
        mapper.SetInputData(self.box_poly)
        self.box_actor = vtk.vtkActor2D()
        self.box_actor.SetMapper(mapper)
        prop = self.box_actor.GetProperty()
        prop.SetColor(*BOX_COLOR)
        prop.SetLineWidth(2)
        self.box_actor.VisibilityOff()

        self.marker_points = vtk.vtkPoints()
        self.marker_colors = vtk.vtkUnsignedCharArray()
        self.marker_colors.SetNumberOfComponents(3)
        self.marker_poly = vtk.vtkPolyData()
        self.marker_poly.SetPoints(self.marker_points)
        self.marker_poly.GetPointData().SetScalars(self.marker_colors)
        self.marker_verts = vtk.vtkCellArray()
        self.marker_poly.SetVerts(self.marker_verts)
        marker_mapper = vtk.vtkPolyDataMapper2D()
        marker_mapper.SetInputData(self.marker_poly)
        self.marker_actor = vtk.vtkActor2D()
        self.marker_actor.SetMapper(marker_mapper)
        self.marker_actor.GetProperty().SetPointSize(9)
        self.marker_actor.VisibilityOff()

    def actors(self) -> list[vtk.vtkActor2D]:
        return [self.box_actor, self.marker_actor]

    # ---- editing -------------------------------------------------------------------
    def set_box(self, xy0: Sequence[float], xy1: Sequence[float]) -> None:
        """The box from view pixel xy0 to xy1, on the slice the view shows now.

        A box replaces that slice's earlier prompt (points included), so marks are reset.
        """
        self.points_ras = []
        corners = [(xy0[0], xy0[1]), (xy1[0], xy0[1]), (xy1[0], xy1[1]), (xy0[0], xy1[1])]
        self.box_ras = [self._xy_to_ras(c) for c in corners]
        self._plane = self._current_plane()
        self.update()

    def add_point(self, xy: Sequence[float], positive: bool) -> None:
        if self._plane is not None and not self._on_plane():
            self.clear()
        self.points_ras.append((self._xy_to_ras(xy), positive))
        self._plane = self._current_plane()
        self.update()

    def clear(self) -> None:
        self.box_ras, self.points_ras, self._plane = [], [], None
        self.update()

    # ---- view changes --------------------------------------------------------------
    def update(self) -> None:
        """Re-position in the view (call from processViewNodeEvents)."""
        visible = self._plane is not None and self._on_plane()
        ras_to_xy = np.linalg.inv(self._xy_to_ras_matrix())
        if self.box_ras and visible:
            for n, ras in enumerate(self.box_ras):
                x, y = (ras_to_xy @ np.append(ras, 1.0))[:2]
                self.box_points.SetPoint(n, x, y, 0.0)
            self.box_points.Modified()
            self.box_actor.VisibilityOn()
        else:
            self.box_actor.VisibilityOff()
        self.marker_points.Reset()
        self.marker_colors.Reset()
        self.marker_verts.Reset()
        if visible:
            for ras, positive in self.points_ras:
                x, y = (ras_to_xy @ np.append(ras, 1.0))[:2]
                pid = self.marker_points.InsertNextPoint(x, y, 0.0)
                self.marker_verts.InsertNextCell(1)
                self.marker_verts.InsertCellPoint(pid)
                color = POSITIVE_COLOR if positive else NEGATIVE_COLOR
                self.marker_colors.InsertNextTuple3(*(int(255 * c) for c in color))
        self.marker_points.Modified()
        self.marker_poly.Modified()
        self.marker_actor.SetVisibility(bool(visible and self.points_ras))

    # ---- internals -----------------------------------------------------------------
    def _xy_to_ras_matrix(self) -> np.ndarray:
        m = self.slice_node.GetXYToRAS()
        return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])

    def _xy_to_ras(self, xy: Sequence[float]) -> np.ndarray:
        return (self._xy_to_ras_matrix() @ np.array([xy[0], xy[1], 0.0, 1.0]))[:3]

    def _current_plane(self) -> tuple[np.ndarray, float]:
        m = self._xy_to_ras_matrix()
        normal = np.cross(m[:3, 0], m[:3, 1])
        normal /= np.linalg.norm(normal)
        return normal, float(normal @ m[:3, 3])

    def _on_plane(self) -> bool:
        """Is the view still showing the plane the marks were made on (within 0.1 mm)?"""
        normal, offset = self._plane
        now_normal, now_offset = self._current_plane()
        return bool(abs(abs(normal @ now_normal) - 1.0) < 1e-6
                    and abs(normal @ now_normal * now_offset - offset) < 0.1)
