"""The network, its strict checkpoint loading, random test checkpoints and device choice."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from medsam_server.engine.model import (
    CheckpointError,
    autocast_for,
    build_model,
    load_checkpoint,
    pick_device,
    read_state_dict,
    write_random_checkpoint,
)

RELEASED_SIZE = 156_030_033  # bytes of MedSAM2_latest.pt


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model("cpu")


@pytest.fixture(scope="module")
def state(random_checkpoint: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(random_checkpoint)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- random checkpoints --------------------------------------------------------------


def test_random_checkpoint_has_the_released_layout(random_checkpoint):
    payload = torch.load(random_checkpoint, map_location="cpu", weights_only=True)
    assert isinstance(payload, dict)
    assert list(payload) == ["model"]
    sd = payload["model"]
    assert isinstance(sd, dict) and len(sd) > 100
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items())
    assert random_checkpoint.stat().st_size == pytest.approx(RELEASED_SIZE, rel=0.01)
    assert not random_checkpoint.with_name(random_checkpoint.name + ".part").exists()


def test_random_checkpoint_keys_match_the_architecture(state, model):
    assert state.keys() == model.state_dict().keys()
    own = model.state_dict()
    assert all(own[k].shape == state[k].shape for k in own)


def test_same_seed_same_tensors_other_seed_other_tensors(random_checkpoint, state, tmp_path):
    rng_before = torch.get_rng_state()
    again = write_random_checkpoint(tmp_path / "seed0.pt", seed=0)
    other = write_random_checkpoint(tmp_path / "sub" / "seed1.pt", seed=1)  # makes the folder
    assert torch.equal(torch.get_rng_state(), rng_before), "writing must not disturb the RNG"
    assert _same(read_state_dict(again), state)
    sd1 = read_state_dict(other)
    assert sd1.keys() == state.keys()
    differing = [k for k in state if not torch.equal(state[k], sd1[k])]
    # every randomly initialised matrix differs (norms start at 1 and biases at 0 either way)
    matrices = [k for k in state if k.endswith(".weight") and state[k].ndim >= 2]
    assert len(matrices) > 100
    assert set(matrices) <= set(differing)


# ---- strict loading ------------------------------------------------------------------


def test_good_checkpoint_loads_every_tensor(model, random_checkpoint, state):
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    load_checkpoint(model, random_checkpoint)
    assert _same(model.state_dict(), state)


def test_truncated_checkpoint(random_checkpoint, tmp_path, model):
    cut = tmp_path / "cut.pt"
    data = random_checkpoint.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(cut))) as exc:
        load_checkpoint(model, cut)
    assert "complete" in str(exc.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n", os.urandom(4096)],
                         ids=["empty", "text", "random"])
def test_files_that_are_no_torch_checkpoint(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(str(bad))) as exc:
        read_state_dict(bad)
    assert "\n" not in str(exc.value)


def test_missing_file():
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict("/nonexistent/MedSAM2_latest.pt")


def test_renamed_key_names_missing_and_unexpected(model, state, tmp_path):
    key = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    assert key in state
    sd = dict(state)
    sd["sam_mask_decoder.iou_head_renamed.weight"] = sd.pop(key)
    path = tmp_path / "renamed.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(model, path)
    msg = str(exc.value)
    assert f"missing keys: {key}" in msg
    assert "unexpected keys: sam_mask_decoder.iou_head_renamed.weight" in msg
    assert str(path) in msg


def test_wrong_shape_is_named_and_model_is_left_untouched(model, state, random_checkpoint,
                                                          tmp_path):
    load_checkpoint(model, random_checkpoint)
    key = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    sd = dict(state)
    sd[key] = torch.zeros(sd[key].shape[0] + 1, sd[key].shape[1])
    # some other tensor changed too: a failed load must not copy it in
    other = "obj_ptr_proj.layers.0.weight"
    sd[other] = torch.full_like(sd[other], 7.0)
    path = tmp_path / "shape.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match=f"wrong shape keys: {re.escape(key)}"):
        load_checkpoint(model, path)
    assert _same(model.state_dict(), state)


def test_non_tensor_value_is_a_checkpoint_error(model, state, tmp_path):
    sd = dict(state)
    sd["obj_ptr_proj.layers.0.bias"] = 3  # weights_only allows plain numbers
    path = tmp_path / "number.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match="obj_ptr_proj.layers.0.bias"):
        load_checkpoint(model, path)


@pytest.mark.parametrize("payload", [
    {"state_dict": {"w": torch.zeros(2)}},
    {"model": [torch.zeros(2)]},
    [torch.zeros(2)],
    torch.zeros(2),
], ids=["state_dict", "model-list", "list", "tensor"])
def test_other_layouts_are_refused(tmp_path, payload):
    path = tmp_path / "layout.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="not a MedSAM2 release file"):
        read_state_dict(path)


class _Payload:
    """Unpickling this calls open(marker, "w"): code execution, if the loader allows it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.marker), "w"))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path, model):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"x": _Payload(marker)}}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(model, path)
    assert not marker.exists(), "the checkpoint's code ran"
    # the payload is live: a full unpickle would have created the file
    with contextlib.closing(torch.load(path, weights_only=False)["model"]["x"]):
        pass
    assert marker.exists()


# ---- devices -------------------------------------------------------------------------


def test_pick_device():
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert pick_device("auto") == torch.device("cpu")
        assert pick_device() == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("CPU") == torch.device("cpu")
    for bad in ("gpu", "tpu", "cuda:0", ""):
        with pytest.raises(ValueError, match="unknown device"):
            pick_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_pick_cuda_without_a_gpu_is_an_error():
    with pytest.raises(ValueError, match="CUDA"):
        pick_device("cuda")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is present")
def test_pick_mps_without_mps_is_an_error():
    with pytest.raises(ValueError, match="MPS"):
        pick_device("mps")


def test_fp32_autocast_is_a_no_op():
    ctx = autocast_for(torch.device("cpu"), "fp32")
    assert isinstance(ctx, contextlib.nullcontext)
    a = torch.randn(4, 4)
    with ctx:
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ a).dtype == torch.float32


# ---- a fresh process -----------------------------------------------------------------


def test_build_in_a_fresh_process_without_torchvision_or_hydra_state(tmp_path):
    # A stand-in torchvision shadows any real one: importing it at all lands it in
    # sys.modules, so the check is meaningful whether or not torchvision is installed.
    fake = tmp_path / "fake" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    code = textwrap.dedent("""
        import sys
        from hydra.core.global_hydra import GlobalHydra
        import medsam_server.engine.model as m
        GlobalHydra.instance().clear()  # no compose state, whatever imports did
        net = m.build_model("cpu")
        assert not net.training
        assert net.image_size == 512, net.image_size
        assert "torchvision" not in sys.modules, "building the model imported torchvision"
        print("params", sum(p.numel() for p in net.parameters()))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path / "fake"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("params ")
    assert int(proc.stdout.split()[1]) > 30_000_000
