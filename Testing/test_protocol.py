"""Tests for medsam_client.protocol: the array codec and the JSON messages (no server)."""

from __future__ import annotations

import base64
import dataclasses
import json
import zlib

import numpy as np
import pytest
from medsam_client import protocol as P

ENCODINGS = P.available_encodings()


def _sample(dtype: str, shape: tuple[int, ...] = (3, 5, 7)) -> np.ndarray:
    rng = np.random.default_rng(0)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        a.flat[0], a.flat[1] = info.min, info.max  # extremes survive the trip
        return a
    return rng.normal(0, 1000, size=shape).astype(dtype)


# ---------------------------------------------------------------- arrays
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("dtype", P.VOLUME_DTYPES)
def test_array_round_trip_every_volume_dtype(dtype, encoding):
    a = _sample(dtype)
    enc = P.encode_array(a, encoding)
    assert (enc.dtype, enc.shape, enc.encoding) == (dtype, [3, 5, 7], encoding)
    back = P.decode_array(enc, allowed_dtypes=P.VOLUME_DTYPES)
    assert back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back, a)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_big_endian_and_non_contiguous_inputs_decode_to_the_same_values(encoding):
    a = _sample("int16", (4, 6, 8))
    be = a.astype(">i2")[:, ::2, ::-1]  # big-endian, strided view
    back = P.decode_array(P.encode_array(be, encoding), allowed_dtypes=P.VOLUME_DTYPES)
    np.testing.assert_array_equal(back, a[:, ::2, ::-1])
    # the wire is little-endian whatever the sender's byte order
    raw = P.decompress(base64.b64decode(P.encode_array(be, "raw").data), "raw", 1 << 20)
    assert raw == np.ascontiguousarray(a[:, ::2, ::-1]).astype("<i2").tobytes()


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_bool_mask_travels_as_uint8_and_comes_back_bool_via_uncrop(encoding):
    m = np.zeros((5, 6), bool)
    m[1:3, 2:5] = True
    enc = P.encode_array(m, encoding)
    assert enc.dtype == "uint8"
    np.testing.assert_array_equal(P.decode_array(enc), m.astype(np.uint8))
    cm = P.crop_mask(m, encoding)
    assert cm.offset == [1, 2] and cm.full_shape == [5, 6] and cm.array.shape == [2, 3]
    out = P.uncrop_mask(cm)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, m)


def test_crop_uncrop_3d_and_single_voxel():
    m = np.zeros((4, 5, 6), bool)
    m[3, 4, 5] = True  # the last corner: crop must reach the edge exactly
    cm = P.crop_mask(m)
    assert cm.offset == [3, 4, 5] and cm.array.shape == [1, 1, 1]
    np.testing.assert_array_equal(P.uncrop_mask(cm), m)


def test_empty_mask_crops_to_an_empty_array():
    cm = P.crop_mask(np.zeros((3, 4, 5), bool))
    assert cm.offset == [0, 0, 0] and cm.full_shape == [3, 4, 5]
    assert cm.array.shape == [0, 0, 0]
    out = P.uncrop_mask(cm)
    assert out.shape == (3, 4, 5) and not out.any()


def test_uncrop_refuses_a_crop_outside_its_full_shape():
    cm = P.crop_mask(np.ones((2, 2), bool))
    cm.offset = [3, 0]
    cm.full_shape = [4, 4]
    with pytest.raises(P.CodecError, match="outside"):
        P.uncrop_mask(cm)
    cm.offset = [0]
    with pytest.raises(P.CodecError, match="rank"):
        P.uncrop_mask(cm)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_truncated_data_is_a_codec_error(encoding):
    enc = P.encode_array(_sample("uint8", (16, 16)), encoding)
    raw = base64.b64decode(enc.data)
    enc.data = base64.b64encode(raw[: len(raw) // 2]).decode()
    with pytest.raises(P.CodecError):
        P.decode_array(enc)


@pytest.mark.parametrize("encoding", [e for e in ENCODINGS if e != "raw"])
def test_corrupt_compressed_data_is_a_codec_error(encoding):
    enc = P.encode_array(_sample("uint8", (16, 16)), encoding)
    enc.data = base64.b64encode(b"\x00garbage-that-is-not-compressed" * 3).decode()
    with pytest.raises(P.CodecError):
        P.decode_array(enc)


def test_invalid_base64_and_unknown_encoding_are_codec_errors():
    enc = P.encode_array(np.zeros((2, 2), np.uint8), "raw")
    with pytest.raises(P.CodecError, match="base64"):
        P.decode_array(dataclasses.replace(enc, data="***not base64***"))
    with pytest.raises(P.CodecError, match="unknown encoding"):
        P.decode_array(dataclasses.replace(enc, encoding="lzma"))


@pytest.mark.parametrize("encoding", [e for e in ENCODINGS if e != "raw"])
def test_zip_bomb_is_refused_without_expanding_it(encoding):
    bomb = P.compress(bytes(64 << 20), encoding)  # 64 MiB of zeros in a few KiB
    assert len(bomb) < 1 << 20
    with pytest.raises(P.CodecError, match="beyond"):
        P.decompress(bomb, encoding, max_bytes=1 << 20)
    # a message claiming a small array but carrying the bomb is refused too
    enc = P.EncodedArray("uint8", [1024], base64.b64encode(bomb).decode(), encoding)
    with pytest.raises(P.CodecError):
        P.decode_array(enc)


def test_declared_size_over_the_limit_is_refused_before_decoding():
    enc = P.EncodedArray("uint8", [1 << 16, 1 << 16], "", "raw")
    with pytest.raises(P.CodecError, match="limit"):
        P.decode_array(enc, max_bytes=1 << 20)


def test_wrong_dtype_and_shape_are_codec_errors():
    enc = P.encode_array(np.zeros((4, 4), np.uint8), "zlib")
    with pytest.raises(P.CodecError, match="not allowed"):
        P.decode_array(dataclasses.replace(enc, dtype="float32"))  # not a mask dtype
    with pytest.raises(P.CodecError, match="need"):
        P.decode_array(dataclasses.replace(enc, shape=[4, 5]))
    with pytest.raises(P.CodecError, match="non-negative"):
        P.decode_array(dataclasses.replace(enc, shape=[-4, -4]))
    with pytest.raises(P.CodecError, match="non-negative"):
        P.decode_array(dataclasses.replace(enc, shape="4x4"))
    with pytest.raises(P.CodecError, match="need"):
        P.bytes_to_array(b"\x00" * 7, "int16", [2, 2])


def test_sha256_depends_on_values_dtype_and_shape_not_byte_order():
    a = _sample("int16", (2, 3, 4))
    assert P.sha256_array(a) == P.sha256_array(a.astype(">i2"))
    assert P.sha256_array(a) == P.sha256_array(np.asfortranarray(a))
    assert P.sha256_array(a) != P.sha256_array(a.astype(np.int32))
    assert P.sha256_array(a) != P.sha256_array(a.reshape(3, 2, 4))
    b = a.copy()
    b[1, 2, 3] += 1
    assert P.sha256_array(a) != P.sha256_array(b)


# ---------------------------------------------------------------- messages
def _cropped() -> P.CroppedMask:
    m = np.zeros((6, 7), bool)
    m[2:4, 1:6] = True
    return P.crop_mask(m)


def _update(index: int) -> P.SliceUpdate:
    return P.SliceUpdate(object_id=2, axis="k", index=index, iou=0.9, object_score=3.5,
                         mask=_cropped())


MESSAGES = [
    P.ErrorBody("session_gone", "no session abc"),
    P.Health("ok", "0.1.0"),
    P.Info("0.1.0", 1, "MedSAM2", "ab" * 32, "cpu", 2, 0, {"rss": 1}, {"max_upload_mb": 9},
           ["zstd", "zlib"]),
    P.VolumeMeta([3, 4, 5], "int16", "f" * 64, "zstd", [0.7, 0.7, 3.0], [1.0, -2.0, 3.0],
                 [1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0], "mr", None, "ct.nii.gz"),
    P.VolumeMeta([3, 4, 5], "float32", "e" * 64, window=[40.0, 400.0]),
    P.SessionInfo("s1", "ready", [3, 4, 5], "f" * 64, [1, 2], 1800.0),
    P.Deleted("s1"),
    P.PromptRequest(1, "j", 3, box=[1.0, 2.0, 3.0, 4.0], points=[[1.5, 2.5]], point_labels=[0]),
    P.PromptRequest(1, "i", 0, mask=P.encode_array(np.eye(3, dtype=bool))),
    _update(4),
    P.PropagateRequest([1, 2], "k", "forward", 3, 1, 9, 2, 0.9),
    P.JobInfo("j1", "s1", "running", 2, 10, [_update(4), _update(5)], 2),
    P.JobInfo("j2", "s1", "failed", 0, 10, [], 0, P.ErrorBody("internal", "boom")),
    P.ObjectMask(3, _cropped()),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_json(msg):
    wire = json.dumps(P.to_json(msg))  # what actually travels
    back = P.from_json(type(msg), json.loads(wire))
    assert back == msg
    assert type(back) is type(msg)


def test_nested_messages_are_rebuilt_as_their_types():
    job = P.from_json(P.JobInfo, json.loads(json.dumps(P.to_json(MESSAGES[11]))))
    assert isinstance(job.updates[0], P.SliceUpdate)
    assert isinstance(job.updates[0].mask, P.CroppedMask)
    np.testing.assert_array_equal(P.uncrop_mask(job.updates[1].mask), P.uncrop_mask(_cropped()))
    failed = P.from_json(P.JobInfo, P.to_json(MESSAGES[12]))
    assert isinstance(failed.error, P.ErrorBody) and failed.error.message == "boom"
    req = P.from_json(P.PromptRequest, P.to_json(MESSAGES[8]))
    np.testing.assert_array_equal(P.decode_array(req.mask), np.eye(3, dtype=np.uint8))


def test_unknown_fields_are_ignored_and_missing_ones_are_errors():
    data = P.to_json(P.Deleted("x")) | {"added_in_a_later_version": 1}
    assert P.from_json(P.Deleted, data) == P.Deleted("x")
    with pytest.raises(P.CodecError, match="SessionInfo"):
        P.from_json(P.SessionInfo, {"session_id": "s"})
    with pytest.raises(P.CodecError):
        P.from_json(P.Health, ["not", "an", "object"])


def test_zlib_stream_is_plain_zlib():
    # the Slicer side may lack zstandard: zlib must be the stdlib format
    raw = P.compress(b"abc" * 100, "zlib")
    assert zlib.decompress(raw) == b"abc" * 100
    assert P.best_encoding() in P.available_encodings()
