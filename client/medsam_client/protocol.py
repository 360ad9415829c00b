"""The wire protocol between MedSAMSegment (Slicer side) and medsam-server: the one definition.

Messages are stdlib dataclasses (FastAPI builds its schemas and validation from them;
the client builds and reads them with ``to_json``/``from_json``). Arrays travel as
``EncodedArray``: dtype + shape + encoding + base64 bytes in JSON, or, for the volume
upload, as the raw (optionally compressed) request body described by ``VolumeMeta``.

Pure Python + numpy (+ zstandard when installed): no torch, no pydantic import, so
Slicer bundles this package as is.

HTTP API (all but /health need ``Authorization: Bearer <token>``):
  GET    /health                                   → Health
  GET    /info                                     → Info (version, capabilities, limits)
  POST   /sessions                 VolumeMeta      → SessionInfo (state "awaiting_volume")
  PUT    /sessions/{sid}/volume    raw body        → SessionInfo (state "ready")
  GET    /sessions/{sid}                           → SessionInfo (time left; renews nothing)
  DELETE /sessions/{sid}                           → Deleted
  POST   /sessions/{sid}/heartbeat                 → Lease   [capability "lease"]
  POST   /sessions/{sid}/prompt    PromptRequest   → SliceUpdate (that slice's mask at once)
  POST   /sessions/{sid}/propagate PropagateRequest→ JobInfo
  GET    /sessions/{sid}/objects/{oid}/mask        → ObjectMask (3D, cropped, with offset)
         ...?phase=P                               → that phase's 3D mask  [capability "phases"]
  POST   /sessions/{sid}/objects/{oid}/undo        → Undone  [capability "undo"]
  POST   /sessions/{sid}/focus     FocusRequest    → Focused (202: queued)  [capability "focus"]
  DELETE /sessions/{sid}/objects/{oid}             → Deleted
  GET    /jobs/{jid}?since=N&wait=S                → JobInfo with updates[N:] (long poll ≤ S s)
  POST   /jobs/{jid}/cancel                        → JobInfo

Versions: ``Info.protocol`` is the major version, changed only by a breaking change (a
client refuses another major). Everything added since is a capability (``Info.capabilities``):
a client uses a feature only when the server lists it, and new message fields have
defaults, so old clients and servers keep working with new ones (unknown keys are ignored
on both sides).

Routing: a session id is ``[replica.]token`` and a job id ``<session id>.token``, so a reverse
proxy routes every request of a session, jobs included, by the key in the path.

Errors: any 4xx/5xx body is ErrorBody ``{"error": code, "message": text}``. A 404 says
  what is missing: ``session_gone`` (unknown session: closed, expired, its client's lease
  lapsed, or lost in a server restart; upload the volume again), ``object_not_found`` (the
  session has no such object), ``job_gone`` (unknown or forgotten job); plain
  ``not_found`` is an unknown route.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import types
import typing
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

try:  # zstd is faster and smaller; zlib (stdlib) is always there
    import zstandard as _zstd
except ImportError:  # pragma: no cover - depends on the interpreter (e.g. a bare Slicer)
    _zstd = None

# The major version: only a breaking change bumps it, and a client refuses another major.
PROTOCOL_VERSION = 1
# What this side knows beyond major 1.0 (Info.capabilities):
#   lease: sessions created with VolumeMeta.lease are closed when their client stops
#          heartbeating (POST /sessions/{sid}/heartbeat) for Info.limits["lease_timeout_s"];
#   undo:  POST /sessions/{sid}/objects/{oid}/undo takes back an object's last prompt;
#   focus: POST /sessions/{sid}/focus encodes the slice a user looks at, then its
#          neighbours, while the model has nothing else to do (a prompt then needs
#          only the decoder);
#   time:  a session over frames (VolumeMeta.time: 2D + time, grey (frames, rows, columns)
#          or colour (frames, rows, columns, 3) uint8 RGB); prompts, propagation and focus
#          name the frame axis "t" (the array's first axis), and its updates say "t";
#   phases: 3D + time (VolumeMeta.phases: shape (phases, k, j, i), one grid, one upload):
#          prompts and spatial propagation on VolumeMeta.key_phase along k/j/i as a 3D
#          session; propagation along "t" carries the key phase's slice masks to the other
#          phases; every SliceUpdate names its ``phase``; masks per phase (?phase=P).
CAPABILITIES = ("lease", "undo", "focus", "time", "phases")

# Error codes (ErrorBody.error) clients act on; one name per condition.
SESSION_GONE = "session_gone"
JOB_GONE = "job_gone"
OBJECT_NOT_FOUND = "object_not_found"
# What servers before capabilities (medsam-server 0.1 without Info.capabilities) sent for
# the same conditions; clients read them as the names above.
LEGACY_ERROR_CODES = {"session_not_found": SESSION_GONE, "job_not_found": JOB_GONE}
Encoding = Literal["zstd", "zlib", "raw"]
# "t": the frame axis of a time session (capability "time"), the array's first axis
Axis = Literal["k", "j", "i", "t"]
Direction = Literal["both", "forward", "backward"]
Modality = Literal["ct", "mr", "none"]
JobState = Literal["queued", "running", "done", "cancelled", "failed"]
SessionState = Literal["awaiting_volume", "ready"]

# Voxel types a volume may be uploaded as (numpy names, little-endian on the wire).
VOLUME_DTYPES = ("uint8", "int8", "uint16", "int16", "int32", "uint32", "float32", "float64")
# Array types allowed inside JSON messages (masks).
MASK_DTYPES = ("uint8", "bool")


class CodecError(ValueError):
    """An encoded array that cannot be decoded as announced."""


def available_encodings() -> tuple[str, ...]:
    return ("zstd", "zlib", "raw") if _zstd is not None else ("zlib", "raw")


def best_encoding() -> Encoding:
    return "zstd" if _zstd is not None else "zlib"


def compress(data: bytes, encoding: Encoding) -> bytes:
    if encoding == "raw":
        return data
    if encoding == "zlib":
        return zlib.compress(data, 1)
    if encoding == "zstd":
        if _zstd is None:
            raise CodecError("zstd is not installed here; use zlib")
        return _zstd.ZstdCompressor(level=3).compress(data)
    raise CodecError(f"unknown encoding {encoding!r}")


def decompress(data: bytes, encoding: str, max_bytes: int) -> bytes:
    """Decompress at most ``max_bytes`` (a zip bomb is refused, not expanded)."""
    try:
        if encoding == "raw":
            out = data
        elif encoding == "zlib":
            d = zlib.decompressobj()
            out = d.decompress(data, max_bytes + 1)
            if not d.eof and len(out) <= max_bytes:
                raise CodecError("zlib data is truncated")
        elif encoding == "zstd":
            if _zstd is None:
                raise CodecError("zstd is not installed on this side; use zlib")
            reader = _zstd.ZstdDecompressor().stream_reader(data)
            out = reader.read(max_bytes + 1)
        else:
            raise CodecError(f"unknown encoding {encoding!r}: use {', '.join(available_encodings())}")
    except (zlib.error, _ZstdError) as exc:
        raise CodecError(f"corrupt {encoding} data: {exc}") from None
    if len(out) > max_bytes:
        raise CodecError(f"data expands beyond the expected {max_bytes} bytes")
    return out


_ZstdError = _zstd.ZstdError if _zstd is not None else zlib.error


def array_nbytes(shape: list[int] | tuple[int, ...], dtype: str) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * np.dtype(dtype).itemsize


def sha256_array(array: np.ndarray) -> str:
    """Content hash of an array's little-endian C-order bytes (+ dtype and shape)."""
    a = np.ascontiguousarray(array)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


@dataclass
class EncodedArray:
    """An array in JSON: ``data`` is base64 of the (compressed) little-endian C-order bytes."""

    dtype: str
    shape: list[int]
    data: str
    encoding: Encoding = "zlib"


def encode_array(array: np.ndarray, encoding: Encoding | None = None) -> EncodedArray:
    a = np.ascontiguousarray(array)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    enc = encoding or best_encoding()
    raw = compress(a.tobytes(), enc)
    return EncodedArray(dtype=a.dtype.name, shape=list(a.shape),
                        data=base64.b64encode(raw).decode("ascii"), encoding=enc)


def decode_array(enc: EncodedArray, *, allowed_dtypes: tuple[str, ...] = MASK_DTYPES,
                 max_bytes: int = 1 << 30) -> np.ndarray:
    """Decode and check dtype, shape and size; raises CodecError with the reason."""
    if enc.dtype not in allowed_dtypes:
        raise CodecError(f"dtype {enc.dtype!r} not allowed here; use one of {allowed_dtypes}")
    if not isinstance(enc.shape, list) or not all(
        isinstance(s, int) and s >= 0 for s in enc.shape
    ):
        raise CodecError(f"shape {enc.shape!r} must be a list of non-negative integers")
    expected = array_nbytes(enc.shape, enc.dtype)
    if expected > max_bytes:
        raise CodecError(f"array of {expected} bytes is over the {max_bytes}-byte limit")
    try:
        raw = base64.b64decode(enc.data, validate=True)
    except (ValueError, TypeError) as exc:
        raise CodecError(f"data is not valid base64: {exc}") from None
    return bytes_to_array(decompress(raw, enc.encoding, expected), enc.dtype, enc.shape)


def bytes_to_array(raw: bytes, dtype: str, shape: list[int] | tuple[int, ...]) -> np.ndarray:
    expected = array_nbytes(shape, dtype)
    if len(raw) != expected:
        raise CodecError(
            f"got {len(raw)} bytes, but dtype {dtype} and shape {list(shape)} need {expected}"
        )
    dt = np.dtype(dtype).newbyteorder("<")
    arr = np.frombuffer(raw, dtype=dt).reshape(shape)
    if dtype == "bool":
        return arr.astype(bool)
    return arr.astype(dt.newbyteorder("="), copy=True)


@dataclass
class CroppedMask:
    """A boolean mask cropped to its bounding box: ``offset`` is where ``array`` starts.

    Empty masks have an empty array (all shape entries 0) and offset zeros.
    """

    offset: list[int]
    full_shape: list[int]
    array: EncodedArray


def crop_mask(mask: np.ndarray, encoding: Encoding | None = None) -> CroppedMask:
    mask = np.asarray(mask, dtype=bool)
    nz = np.nonzero(mask)
    if nz[0].size == 0:
        empty = np.zeros((0,) * mask.ndim, dtype=np.uint8)
        return CroppedMask([0] * mask.ndim, list(mask.shape), encode_array(empty, encoding))
    lo = [int(ix.min()) for ix in nz]
    hi = [int(ix.max()) + 1 for ix in nz]
    crop = mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    return CroppedMask(lo, list(mask.shape), encode_array(crop, encoding))


def uncrop_mask(cm: CroppedMask, max_bytes: int = 1 << 31) -> np.ndarray:
    out = np.zeros(cm.full_shape, dtype=bool)
    crop = decode_array(cm.array, max_bytes=max_bytes).astype(bool)
    if crop.size == 0:
        return out
    if len(cm.offset) != out.ndim or crop.ndim != out.ndim:
        raise CodecError("mask offset/shape rank does not match the full shape")
    region = tuple(slice(o, o + s) for o, s in zip(cm.offset, crop.shape, strict=True))
    if any(o < 0 or o + s > f for o, s, f in zip(cm.offset, crop.shape, cm.full_shape,
                                                  strict=True)):
        raise CodecError("mask crop lies outside its full shape")
    out[region] = crop
    return out


# ---- messages ------------------------------------------------------------------------
@dataclass
class ErrorBody:
    error: str
    message: str


@dataclass
class Health:
    status: str = "ok"
    version: str = ""


@dataclass
class Info:
    version: str
    protocol: int  # the major version (PROTOCOL_VERSION)
    model: str
    checkpoint_sha256: str
    device: str
    sessions: int
    jobs_queued: int
    memory: dict[str, int]
    limits: dict[str, int]
    encodings: list[str]
    # since capabilities (absent from older servers: the defaults say "none of it")
    capabilities: list[str] = field(default_factory=list)
    replica: str = ""  # this server's name behind a proxy (the prefix of its session ids)
    warm_start_s: float | None = None  # the start-up forward pass; None: skipped
    # since --precision: "fp32" or "bf16" (bf16 autocast); "" from servers before it (they
    # ran bf16 on CUDA, fp32 elsewhere)
    precision: str = ""
    # serve --compile: "off", "on", or "failed: <why>" (the encoder then runs eager)
    compiled: str = "off"
    # the CPU kernels in use: "onednn" (x86-64 CPUs) or "stock"; "" from older servers
    kernels: str = ""


@dataclass
class VolumeMeta:
    """What ``POST /sessions`` announces; the voxels follow in ``PUT .../volume``.

    ``shape`` is numpy order (k, j, i); spacing/origin/direction as SimpleITK (x, y, z, LPS).
    ``sha256`` = ``sha256_array`` of the voxels, checked on upload and used by clients to
    decide whether a re-upload is needed.
    """

    shape: list[int]
    dtype: str
    sha256: str
    encoding: Encoding = "zlib"
    spacing: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    origin: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    direction: list[float] = field(default_factory=lambda: [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
    modality: Modality = "ct"
    window: list[float] | None = None  # CT (level, width); None = default soft tissue
    name: str = ""
    # capability "lease": this client heartbeats the session; the server closes it when the
    # heartbeats stop for its lease timeout (a crashed client frees it within that time)
    lease: bool = False
    # capability "time": frames along the first axis (shape (frames, rows, columns), or
    # (frames, rows, columns, 3) for uint8 RGB colour frames, which are not windowed)
    time: bool = False
    # capability "phases": 3D + time, shape (phases, k, j, i), every phase on the grid of
    # spacing/origin/direction; prompts go on ``key_phase`` (not with ``time``)
    phases: bool = False
    key_phase: int = 0


@dataclass
class SessionInfo:
    session_id: str
    state: SessionState
    shape: list[int]
    volume_sha256: str
    objects: list[int]
    idle_timeout_s: float
    # capability "lease": None when the session has no lease (or the server no leases)
    lease_timeout_s: float | None = None
    lease_left_s: float | None = None  # until the session closes without a heartbeat
    idle_left_s: float | None = None  # until it closes without work (never while at work)


@dataclass
class Lease:
    """The answer to a heartbeat: the lease is renewed (``lease_left_s`` = its timeout)."""

    session_id: str
    lease_timeout_s: float
    lease_left_s: float
    idle_left_s: float


@dataclass
class Deleted:
    deleted: str


@dataclass
class PromptRequest:
    """A prompt on one slice. Box and points in voxel units of that slice (x = column)."""

    object_id: int
    axis: Axis
    index: int
    box: list[float] | None = None
    points: list[list[float]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    mask: EncodedArray | None = None
    # capability "phases": the phase the slice lies in (None: the key phase, the only one
    # prompts may go on; naming it guards against a box drawn on another phase)
    phase: int | None = None


@dataclass
class SliceUpdate:
    """One slice's result for one object (mask cropped to its 2D bounding box)."""

    object_id: int
    axis: Axis
    index: int
    iou: float
    object_score: float
    mask: CroppedMask
    # capability "phases": the phase of a 3D + time session the slice lies in (else None)
    phase: int | None = None


@dataclass
class PropagateRequest:
    object_ids: list[int]
    axis: Axis | None = None
    direction: Direction = "both"
    start: int | None = None
    first: int | None = None
    last: int | None = None
    stop_after_empty: int = 0
    converge_iou: float = 0.98


@dataclass
class JobInfo:
    job_id: str
    session_id: str
    state: JobState
    done_slices: int
    total_slices: int
    updates: list[SliceUpdate] = field(default_factory=list)
    next_since: int = 0
    error: ErrorBody | None = None


@dataclass
class ObjectMask:
    object_id: int
    mask: CroppedMask


@dataclass
class Undone:
    """An object's last prompt taken back (capability "undo").

    Its slice and every slice changed since (by propagations) are as they were before
    that prompt; ``updates`` carries each of those slices as it is now. When that prompt
    created the object, the object is gone (``object_removed``, empty masks).
    """

    object_id: int
    axis: Axis
    index: int  # the slice of the prompt taken back
    kind: Literal["box", "points", "mask"]
    object_removed: bool
    undo_left: int  # prompts of this object that can still be taken back
    updates: list[SliceUpdate] = field(default_factory=list)


@dataclass
class FocusRequest:
    """The slice a user looks at (capability "focus"): scrolled to, or in the view just
    entered. The server encodes it, then its neighbours outwards (index, +1, -1, +2, ...),
    at the lowest priority: any prompt, deletion or propagation goes first."""

    axis: Axis
    index: int


@dataclass
class Focused:
    """The answer to a focus (HTTP 202): queued, not done; ``message`` says what."""

    session_id: str
    axis: Axis
    index: int
    replaced: bool  # the session's earlier focus was dropped for this one
    message: str


# ---- (de)serialisation for the client ------------------------------------------------
def to_json(obj: Any) -> Any:
    """Dataclass → JSON-ready dict (recursively)."""
    return dataclasses.asdict(obj)


def from_json(cls: type, data: Any) -> Any:
    """JSON dict → dataclass ``cls``, recursing by the fields' declared types."""
    if not isinstance(data, dict):
        raise CodecError(f"expected a JSON object for {cls.__name__}")
    hints = _field_types(cls)
    kwargs = {key: _from_json_value(hints[key], value)
              for key, value in data.items() if key in hints}  # unknown (newer) keys ignored
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise CodecError(f"malformed {cls.__name__}: {exc}") from None


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_json_value(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]  # X | None
    if dataclasses.is_dataclass(hint):
        return from_json(hint, value)
    if typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise CodecError(f"expected a list of {args[0].__name__}")
        return [from_json(args[0], v) for v in value]
    return value
