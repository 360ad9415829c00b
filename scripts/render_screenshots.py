"""Render the README pictures the way Slicer's slice views draw them (slicer-core, offscreen).

Runs the effect's real logic (controller.py) against a local worker on the sample CT:
a box on the liver in an axial view -> the key slice's preview, then propagation and
Apply; each picture is Slicer's slice logic (CT, window/level) with the segmentation
displayable manager drawing the segments and the effect's BoxPipeline drawing the box.

    python scripts/render_screenshots.py [--checkpoint CKPT] [--out Resources/Screenshots]

Without --checkpoint (or $MEDSAM2_CHECKPOINT) it uses seeded random weights and says
so on the pictures: the mechanics are real, the masks are meaningless.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "MedSAMSegment"), str(REPO / "Testing")]
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import slicer  # noqa: E402
import vtk  # noqa: E402
from MedSAMSegmentLib.backend import LocalBackend  # noqa: E402
from MedSAMSegmentLib.BoxPipeline import BoxPipeline  # noqa: E402
from MedSAMSegmentLib.controller import Controller  # noqa: E402
from MedSAMSegmentLib.editor import LogicEditorContext  # noqa: E402
from MedSAMSegmentLib.tasks import TaskRunner  # noqa: E402
from MedSAMSegmentLib.views import jump_views, slice_frame  # noqa: E402
from slicer_harness import make_scene  # noqa: E402

CT = REPO / "Resources" / "SampleData" / "example_ct_sm.nii.gz"
KEY, LIVER = 14, (45, 27, 104, 85)
W, H = 400, 330


class SliceRender:
    """One offscreen slice view: slice logic image + displayable managers + our actors."""

    def __init__(self, slice_logic: object, slice_node: object,
                 extra_actors: tuple | list = ()) -> None:
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetSize(W, H)
        self.window.SetNumberOfLayers(2)
        background = vtk.vtkRenderer()
        background.SetLayer(0)
        self.window.AddRenderer(background)
        overlay = vtk.vtkRenderer()
        overlay.SetLayer(1)
        self.window.AddRenderer(overlay)
        interactor = vtk.vtkRenderWindowInteractor()  # the group needs one (else it crashes)
        interactor.SetRenderWindow(self.window)
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        name = "vtkMRMLSegmentationsDisplayableManager2D"
        if not factory.IsDisplayableManagerRegistered(name):
            factory.RegisterDisplayableManager(name)
        self.group = slicer.vtkMRMLDisplayableManagerGroup()
        self.group.Initialize(factory, overlay)
        self.group.SetMRMLDisplayableNode(slice_node)
        mapper = vtk.vtkImageMapper()
        mapper.SetColorWindow(255)
        mapper.SetColorLevel(127.5)
        mapper.SetInputConnection(slice_logic.GetImageDataConnection())
        image = vtk.vtkActor2D()
        image.SetMapper(mapper)
        background.AddViewProp(image)
        for actor in extra_actors:
            overlay.AddViewProp(actor)
        self.overlay = overlay

    def caption(self, text: str) -> None:
        actor = vtk.vtkTextActor()
        actor.SetInput(text)
        actor.GetTextProperty().SetFontSize(14)
        actor.GetTextProperty().SetColor(1.0, 1.0, 0.6)
        actor.SetDisplayPosition(8, 8)
        self.overlay.AddViewProp(actor)

    def grab(self) -> np.ndarray:
        self.window.Render()
        w2i = vtk.vtkWindowToImageFilter()
        w2i.SetInput(self.window)
        w2i.ReadFrontBufferOff()
        w2i.Update()
        from vtk.util import numpy_support

        img = w2i.GetOutput()
        rgb = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())
        return rgb.reshape(img.GetDimensions()[1], img.GetDimensions()[0], -1)[::-1, :, :3].copy()


def save_png(rgb: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=os.environ.get("MEDSAM2_CHECKPOINT"))
    ap.add_argument("--out", type=Path, default=REPO / "Resources" / "Screenshots")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="medsam-shots-"))
    checkpoint, note = args.checkpoint, ""
    if not checkpoint:
        from medsam_server.engine.model import write_random_checkpoint

        checkpoint = write_random_checkpoint(tmp / "random.pt", seed=0)
        note = "random weights: mask meaningless"

    app = make_scene()
    ct = app.load_volume(CT, "CT")
    seg, editor_node, logic = app.editor(ct)
    liver = seg.GetSegmentation().AddEmptySegment("liver", "liver", [0.86, 0.45, 0.2])
    editor_node.SetSelectedSegmentID(liver)
    red, red_logic = app.slice_view("Red", "Axial", ct, size=(W, H))
    ctx = LogicEditorContext(logic)
    image = ctx.source_image()
    runner = TaskRunner()
    backend = LocalBackend(sys.executable, checkpoint, log_path=tmp / "worker.log", device="cpu")
    messages = []
    ctl = Controller(ctx, runner, lambda: backend, on_message=lambda t, lv: messages.append(t))

    def wait() -> None:
        while runner.busy:
            ctl.pump()
            time.sleep(0.05)
        ctl.pump()

    try:
        jump_views([red], image, "k", KEY)
        inv = np.linalg.inv(slice_frame(red, image).xy_to_array)
        p0 = (inv @ [LIVER[0], LIVER[1], KEY, 1])[:2]
        p1 = (inv @ [LIVER[2], LIVER[3], KEY, 1])[:2]
        box = BoxPipeline(red)
        box.set_box(p0, p1)
        ctl.prompt_box(red, tuple(p0), tuple(p1))
        wait()
        view = SliceRender(red_logic, red, box.actors())
        view.caption(f"box on slice {KEY} -> MedSAM2 preview" + (f"\n{note}" if note else ""))
        save_png(view.grab(), args.out / "box.png")

        ctl.propagate()
        wait()
        ctl.apply(replace=True)
        panels = []
        for k in (KEY - 6, KEY, KEY + 6):
            jump_views([red], image, "k", k)
            box.update()  # hidden off its slice, as in Slicer
            view = SliceRender(red_logic, red, box.actors())
            view.caption(f"slice {k}, propagated + applied" + (f"\n{note}" if note else ""))
            panels.append(view.grab())
        save_png(np.concatenate(panels, axis=1), args.out / "propagated.png")
    finally:
        ctl.close()
        backend.close()
        runner.shutdown()
        app.close()
    print("\n".join(messages))
    print(f"wrote {args.out / 'box.png'} and {args.out / 'propagated.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
