"""Read 2D + time inputs (``segment --time``): frames, their pixel spacing and timing.

Inputs, frame index first in every array:
- a multi-frame DICOM file (Ultrasound Multi-frame, XA/XRF, Enhanced MR/CT), read with
  pydicom: YBR and RGB colour is decoded to RGB (the way SAM2 sees video), monochrome frames
  stay grey, rescaled (Rescale Slope/Intercept, or an enhanced file's Pixel Value
  Transformation, shared or per frame); pixel spacing from Pixel Spacing, an enhanced file's
  Pixel Measures (shared or per frame), or the first ultrasound region (Physical Delta X/Y
  in cm); frame timing from Frame Time or Frame Time Vector;
- a video file (MP4, AVI, MOV, MKV, e.g. endoscopy), decoded with PyAV to RGB frames; its
  timing from the stream's average frame rate; no pixel spacing;
- a DICOM folder of one series whose instances all lie at one position (a cine MR exported
  one instance per frame), read by ``dicom_cine``: frames in trigger time order, rescaled;
- a 3D NRRD/NIfTI/MHA (or a DICOM series folder) whose SimpleITK array axis k is the frame
  index, read by ``volumes.read_volume`` with its own grid. A DICOM folder whose slice
  positions repeat over time (a multi-slice cine, phases) is 3D + time and refused here.

``Frames.grid`` is the grid label files are written on: the input's own for a 3D file; for
frames of a DICOM file, a DICOM cine folder or a video, (columns, rows, frames) with the
pixel spacing (1 mm where unknown) and 1.0 between frames, at the origin, with identity
directions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine import ObjectSpec, PromptError, check_slice_prompt, window_to_uint8
from .dicom_cine import holds_dicom_cine, read_dicom_cine
from .dicom_phases import holds_dicom_phases
from .volumes import Volume, VolumeError, read_volume

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass
class Frames:
    """Frames to segment along time, and the grid their label file is written on."""

    pixels: np.ndarray  # (T, rows, columns) grey or (T, rows, columns, 3) uint8 RGB
    grid: Volume  # label files go on this grid (its array: grey frames, or the luma)
    frame_time_ms: float | None  # None where the file does not say
    spacing_mm: tuple[float, float] | None  # (column, row) pixel spacing, None if unknown
    kind: str  # "dicom", "video" or "volume"
    timing: str | None = None  # what the frame time came from, where not the usual field

    @property
    def colour(self) -> bool:
        return self.pixels.ndim == 4

    @property
    def count(self) -> int:
        return int(self.pixels.shape[0])

    def describe(self) -> str:
        """One line for the user: how many frames, their size, colour, spacing and timing."""
        rows, cols = self.pixels.shape[1:3]
        parts = [f"{self.count} {'colour' if self.colour else 'grey'} frames of {cols}x{rows}"]
        if self.spacing_mm:
            parts.append(f"{self.spacing_mm[0]:.3g} x {self.spacing_mm[1]:.3g} mm pixels")
        if self.frame_time_ms:
            parts.append(f"{self.frame_time_ms:.4g} ms a frame "
                         f"({1000.0 / self.frame_time_ms:.3g} fps)"
                         + (f" from {self.timing}" if self.timing else ""))
        return ", ".join(parts)


def read_frames(path: str | os.PathLike) -> Frames:
    """Read a 2D + time input; VolumeError (one line, naming the file) for anything else."""
    p = Path(path)
    if not p.exists():
        raise VolumeError(f"{p}: no such file or folder")
    name = p.name.lower()
    if p.is_file() and name.endswith(VIDEO_SUFFIXES):
        frames = _read_video(p)
    elif p.is_file() and (name.endswith(DICOM_SUFFIXES) or _is_dicom(p)):
        frames = _read_dicom_frames(p)
    elif p.is_dir() and holds_dicom_cine(p):
        cine = read_dicom_cine(p)
        frames = Frames(cine.pixels, frame_grid(cine.pixels, cine.spacing_mm, str(p)),
                        cine.frame_time_ms, cine.spacing_mm, "dicom", cine.timing)
    elif p.is_dir() and holds_dicom_phases(p):
        # ITK's series reader would stack every instance by position, mixing times
        raise VolumeError(f"{p}: its DICOM slice positions repeat over time (a multi-slice "
                          "cine or phases: 3D + time); name the key phase with --phase P")
    else:
        volume = read_volume(p)  # 2D, 4D and 5D images are refused there
        frames = Frames(volume.array, volume, None, volume.spacing[:2], "volume")
    if frames.count < 2:
        raise VolumeError(f"{p}: holds one frame; --time needs at least two")
    return frames


def frame_grid(grey: np.ndarray, spacing_mm: tuple[float, float] | None, source: str) -> Volume:
    """The grid of frames that have no patient geometry: pixels, then frame index."""
    sx, sy = spacing_mm or (1.0, 1.0)
    return Volume(grey, (float(sx), float(sy), 1.0), (0.0, 0.0, 0.0),
                  (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), source)


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of RGB frames, uint8 (the grey image the grid keeps)."""
    y = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _is_dicom(p: Path) -> bool:
    with open(p, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def _read_dicom_frames(p: Path) -> Frames:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(p)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise VolumeError(f"{p}: not a readable DICOM file ({exc})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames < 2:
        raise VolumeError(f"{p}: a single-frame DICOM image; --time needs a multi-frame file "
                          "(ultrasound, XA, cine MR) or a video")
    try:
        pixels = ds.pixel_array  # pydicom converts YBR to RGB (as_rgb defaults to True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for undecodable data
        raise VolumeError(f"{p}: cannot decode its pixel data ({exc})") from None
    samples = int(ds.get("SamplesPerPixel", 1))
    if pixels.ndim != (4 if samples == 3 else 3) or pixels.shape[0] != frames:
        raise VolumeError(f"{p}: unexpected pixel array {pixels.shape} for {frames} frames")
    if samples == 3 and pixels.dtype != np.uint8:
        raise VolumeError(f"{p}: colour frames of {pixels.dtype}; only 8-bit colour is supported")
    if samples == 1:
        pixels = _rescale(ds, pixels)
    spacing = _dicom_spacing(ds)
    grey = luma(pixels) if samples == 3 else pixels
    return Frames(np.ascontiguousarray(pixels), frame_grid(grey, spacing, str(p)),
                  _dicom_frame_time(ds), spacing, "dicom")


def _rescale(ds: object, pixels: np.ndarray) -> np.ndarray:
    """Stored values → modality values (HU for CT), as ITK's reader does for a series:
    Rescale Slope/Intercept, or an enhanced file's Pixel Value Transformation (shared, or
    per frame). Float32 where a rescale changes the values, the stored array otherwise."""
    def pair(item: object) -> tuple[float, float] | None:
        if item is None or "RescaleSlope" not in item or "RescaleIntercept" not in item:
            return None
        return (float(item.RescaleSlope),  # type: ignore[attr-defined]
                float(item.RescaleIntercept))  # type: ignore[attr-defined]

    def transform(group: object) -> object:
        seq = getattr(group, "PixelValueTransformationSequence", None)
        return seq[0] if seq else None

    shared = getattr(ds, "SharedFunctionalGroupsSequence", None)
    one = pair(ds) or pair(transform(shared[0]) if shared else None)
    per_frame = [pair(transform(g)) for g in getattr(ds, "PerFrameFunctionalGroupsSequence", [])]
    if one is not None:
        slopes, intercepts = np.float32(one[0]), np.float32(one[1])
    elif any(per_frame):
        if None in per_frame or len(per_frame) != len(pixels):
            raise VolumeError(f"{getattr(ds, 'filename', 'the file')}: some frames state a "
                              "rescale (Pixel Value Transformation), others do not")
        slopes, intercepts = (np.array(v, dtype=np.float32)[:, None, None]
                              for v in zip(*per_frame, strict=True))
    else:
        return pixels
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return pixels
    return pixels.astype(np.float32) * slopes + intercepts


def _dicom_spacing(ds: object) -> tuple[float, float] | None:
    """(column, row) spacing in mm: Pixel Spacing, else the enhanced file's functional
    groups', else the first ultrasound region's."""
    ps = getattr(ds, "PixelSpacing", None)
    if ps is None:
        ps = _functional_spacing(ds)
    if ps is not None and len(ps) == 2:
        return float(ps[1]), float(ps[0])  # Pixel Spacing is (row, column)
    regions = getattr(ds, "SequenceOfUltrasoundRegions", None)
    if regions:
        r = regions[0]
        # units code 3 = cm (PS3.3 C.8.5.5.1.15)
        if getattr(r, "PhysicalUnitsXDirection", None) == 3 == getattr(
                r, "PhysicalUnitsYDirection", None):
            return float(r.PhysicalDeltaX) * 10.0, float(r.PhysicalDeltaY) * 10.0
    return None


def _functional_spacing(ds: object) -> tuple | None:
    """Pixel Spacing from an enhanced file's Pixel Measures: shared by all frames, or stated
    per frame (PS3.3 C.7.6.16: the macro may sit in either sequence), then one for all."""
    shared = getattr(ds, "SharedFunctionalGroupsSequence", None)
    if shared and getattr(shared[0], "PixelMeasuresSequence", None):
        return getattr(shared[0].PixelMeasuresSequence[0], "PixelSpacing", None)
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None) or []
    found = {tuple(float(v) for v in group.PixelMeasuresSequence[0].PixelSpacing)
             for group in per_frame if getattr(group, "PixelMeasuresSequence", None)
             and "PixelSpacing" in group.PixelMeasuresSequence[0]}
    if len(found) > 1:
        raise VolumeError(f"{getattr(ds, 'filename', 'the file')}: its frames state "
                          f"{len(found)} different pixel spacings; frames of one grid have one")
    return found.pop() if found else None


def _dicom_frame_time(ds: object) -> float | None:
    ft = getattr(ds, "FrameTime", None)
    if ft is not None and float(ft) > 0:
        return float(ft)
    vector = getattr(ds, "FrameTimeVector", None)  # ms since the previous frame
    if vector is not None and len(vector) > 1:
        return float(np.mean([float(v) for v in list(vector)[1:]]))
    return None


def _read_video(p: Path) -> Frames:
    try:
        import av
    except ImportError:
        raise VolumeError(f"{p}: reading video needs PyAV: pip install av") from None
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise VolumeError(f"{p}: has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate
            pixels = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except av.error.FFmpegError as exc:
        raise VolumeError(f"{p}: not a readable video ({exc})") from None
    if not pixels:
        raise VolumeError(f"{p}: holds no frames")
    if len({f.shape for f in pixels}) > 1:
        raise VolumeError(f"{p}: its frames differ in size ({sorted({f.shape for f in pixels})})")
    rgb = np.stack(pixels)
    frame_time = 1000.0 / float(rate) if rate else None
    return Frames(rgb, frame_grid(luma(rgb), None, str(p)), frame_time, None, "video")


def frames_u8(frames: Frames, modality: str, window: tuple[float, float] | None) -> np.ndarray:
    """What the model gets (``segment --time``, its ``--server`` path, ``batch --time``):
    colour and uint8 grey frames as they are, other grey frames (cine MR/CT) windowed by
    modality as a volume is."""
    if frames.colour or frames.pixels.dtype == np.uint8:
        return frames.pixels
    return window_to_uint8(frames.pixels, modality, window)  # type: ignore[arg-type]


def check_frame_prompt(shape: tuple[int, ...], spec: ObjectSpec) -> None:
    """A prompt on a frame: axis k (the frame index), a frame in range, a box that fits;
    PromptError in the frames' words otherwise."""
    if spec.axis != "k":
        raise PromptError(f"with --time the frame axis is k, not {spec.axis}")
    try:
        check_slice_prompt((shape[0], shape[1], shape[2]), "k", spec.slice, spec.prompt)
    except PromptError as exc:
        raise PromptError(str(exc).replace("slice", "frame")) from None
