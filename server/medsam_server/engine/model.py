"""Build the MedSAM2 network, load checkpoints strictly, write random-weight test checkpoints.

The network is Meta's ``sam2`` ``SAM2Base`` built from the config shipped in this
package. We instantiate it with ``hydra.utils.instantiate`` on an OmegaConf tree we
load ourselves, so no global Hydra compose state is touched (importing ``sam2``
initialises Hydra's config module; we never rely on it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import torch

from ..checkpoints import CheckpointError, DeviceError  # noqa: F401  (re-exported)

CONFIG_NAME = "medsam2_hiera_t512.yaml"
IMAGE_SIZE = 512
# MedSAM2 builds its predictor with fill_hole_area=8 (holes up to 8 low-res pixels).
FILL_HOLE_AREA = 8


def _load_config():  # -> omegaconf.DictConfig
    from omegaconf import OmegaConf

    text = resources.files(__package__).joinpath("configs", CONFIG_NAME).read_text()
    return OmegaConf.create(text)


def build_model(device: str | torch.device = "cpu") -> torch.nn.Module:
    """Return the MedSAM2 ``SAM2Base`` network (random init) in eval mode on ``device``."""
    from hydra.utils import instantiate

    cfg = _load_config()
    model = instantiate(cfg.model, _recursive_=True)
    return model.to(device).eval()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read ``{"model": state_dict}`` with ``weights_only=True``; clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code, not a torch file...
        lines = str(exc).splitlines()  # empty for e.g. EOFError() on a 0-byte file
        reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: {reason}"
            " (is the file complete? re-download it or pass another --checkpoint)"
        ) from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise CheckpointError(
            f"checkpoint {path} is not a MedSAM2 release file: expected a dict with a "
            "'model' state_dict"
        )
    return payload["model"]


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike,
                    state: dict[str, torch.Tensor] | None = None) -> None:
    """Load weights strictly; name missing/unexpected/mis-shaped keys in one error."""
    if state is None:
        state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(  # a non-tensor value (possible with weights_only) counts as mis-shaped
        k for k in set(own) & set(state)
        if not isinstance(state[k], torch.Tensor) or tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", shapes)):
            if keys:
                shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
                parts.append(f"{label} keys: {shown}")
        raise CheckpointError(
            f"checkpoint {path} does not match the MedSAM2 (SAM2.1 hiera-tiny 512) "
            "architecture; " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)


def write_random_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a seeded random-weight checkpoint in the released ``{"model": sd}`` layout.

    The weights are meaningless; they exist so tests and benchmarks exercise the exact
    architecture and file format without the real (non-downloadable here) weights.
    """
    path = Path(path)
    with _fork_rng():
        torch.manual_seed(seed)
        model = build_model("cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save({"model": model.state_dict()}, tmp)
    tmp.replace(path)
    return path


@contextlib.contextmanager
def _fork_rng() -> Iterator[None]:
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` = CUDA, then MPS, then CPU. An explicit device that is absent is an error."""
    name = name.lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda asked for, but torch sees no CUDA GPU")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise DeviceError("--device mps asked for, but MPS is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda or mps")
    return torch.device(name)


PRECISIONS = ("auto", "fp32", "bf16")
# x86 flags of native bf16 arithmetic (AVX512-BF16 dot products, AMX tiles); without them
# oneDNN emulates bf16 with conversions and it is no faster than fp32
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty elsewhere: nothing to detect from)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic natively (tests mock this one function)."""
    return bool(cpu_flags() & NATIVE_BF16_FLAGS)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto``/``fp32``/``bf16`` → the precision used on ``device``: ``fp32`` or ``bf16``.

    ``auto``: bf16 on CUDA (MedSAM2 is trained and evaluated under bf16 autocast) and on
    CPUs with native bf16; fp32 elsewhere (MPS: bf16 there is not verified).
    """
    name = str(name).lower()
    if name not in PRECISIONS:
        raise DeviceError(f"unknown precision {name!r}: use auto, fp32 or bf16")
    if name != "auto":
        return name
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return "bf16"
    return "fp32"


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast a model step runs under: bf16 autocast, or none for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise DeviceError(f"precision must be fp32 or bf16 here, not {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def check_autocast(device: torch.device, precision: str) -> None:
    """Fail if ``precision`` would not really apply on ``device``: torch.autocast only warns
    and runs in full precision for a device or dtype it does not support."""
    if precision == "fp32":
        return
    try:
        with autocast_for(device, precision):
            enabled = torch.is_autocast_enabled(device.type)
            dtype = torch.get_autocast_dtype(device.type) if enabled else None
    except RuntimeError:  # some devices refuse outright instead of warning
        dtype = None
    if dtype != torch.bfloat16:
        raise DeviceError(f"--precision {precision} is not supported on {device.type} by this "
                          f"torch {torch.__version__}: use --precision fp32")


def load_model(checkpoint: str | os.PathLike, device: str | torch.device = "auto"
               ) -> tuple[torch.nn.Module, torch.device]:
    """Build, strictly load and move the model; returns it with the device used."""
    dev = pick_device(device) if isinstance(device, str) else device
    state = read_state_dict(checkpoint)  # a bad file fails before the network is built
    model = build_model("cpu")
    load_checkpoint(model, checkpoint, state)
    return model.to(dev).eval(), dev
