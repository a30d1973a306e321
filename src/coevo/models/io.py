"""Saving and loading networks. Every file coevo writes carries its architecture.

Formats understood by :func:`load_generator` (chosen by content and suffix):

* coevo checkpoint (``.pt``/``.pth``): ``{"format": "coevo.generator", "arch": {...}, "state_dict": {...}}``
* reference CycleGAN checkpoint (``latest_net_G_A.pth``): a bare state_dict;
  the architecture (ngf, blocks, even pruned widths) is inferred from the shapes
* safetensors (``.safetensors``) with the architecture as JSON metadata
* TorchScript (``.ts``/``.torchscript``/``.jit``) and ONNX (``.onnx``) exports,
  written by :mod:`coevo.deploy.export`, read by :mod:`coevo.deploy.exported`

All ``torch.load`` calls use ``weights_only=True``: a checkpoint cannot run code.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import torch
from torch import nn

from .discriminator import DiscriminatorArch, NLayerDiscriminator, infer_discriminator_arch
from .generator import GeneratorArch, ResnetGenerator, infer_arch_from_state_dict
from ..core.guards import first_non_finite
from ..errors import CheckpointError
from ..core.files import PathLike, atomic_path, atomic_torch_save, regular_file
from .archive import arch_from_dict
from .family import AnyGeneratorArch, build_generator
from .unet import infer_unet_arch, is_unet_state_dict

log = logging.getLogger(__name__)

_REPORTED: set = set()  # reference checkpoints whose inferred architecture was logged
GEN_FORMAT = "coevo.generator"
DISC_FORMAT = "coevo.discriminator"


def safe_torch_load(path: PathLike) -> Any:
    """``torch.load(weights_only=True)`` on CPU with errors that name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    regular_file(path, "checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or a pickle that needs code
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: {e}). "
            "The file may be truncated or corrupt (re-download or re-export it), or it may be "
            "a full pickled model; coevo only loads state_dicts and its own checkpoints."
        ) from e


def _clean_state_dict(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}  # DataParallel
    out = {}
    for k, v in sd.items():
        # Old reference checkpoints carry InstanceNorm running stats that
        # InstanceNorm2d(track_running_stats=False) neither has nor wants. A BatchNorm's
        # (the layer beside them has an affine weight) are part of the model and stay.
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")) \
                and f"{k.rsplit('.', 1)[0]}.weight" not in sd:
            continue
        out[k] = v
    return out


def _load_into(model: nn.Module, sd: Mapping[str, torch.Tensor], path: PathLike) -> None:
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"weights in {path} do not fit the architecture: {e}") from e



def _checkpoint_parts(obj: Mapping[str, Any], path: PathLike) -> Tuple[Any, Mapping[str, torch.Tensor]]:
    """``(arch, state_dict)`` of a coevo checkpoint dict; CheckpointError when either is missing or malformed."""
    missing = [k for k in ("arch", "state_dict") if k not in obj]
    if missing:
        raise CheckpointError(f"{path} is a {obj.get('format')} checkpoint without {' and '.join(missing)}; "
                              "the file is incomplete or corrupt; re-save it")
    sd = obj["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: its state_dict is not a mapping of tensors; the file is corrupt; re-save it")
    return obj["arch"], sd


def _check_finite_weights(model: nn.Module, path: PathLike) -> None:
    bad = first_non_finite(model.state_dict().items())
    if bad is not None:
        name, kind = bad
        raise CheckpointError(f"{path} has {kind} in {name}; the checkpoint is corrupt or came from a diverged "
                              "training run")


# ----------------------------------------------------------------------------- generators
def save_generator(model: ResnetGenerator, path: PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Save a generator with its architecture. Suffix ``.safetensors`` selects safetensors; anything else torch."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        meta = {"format": GEN_FORMAT, "arch": json.dumps(model.arch.to_dict())}
        if extra:
            meta["extra"] = json.dumps(dict(extra))
        sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(sd, str(tmp), metadata=meta)
        return path
    payload = {
        "format": GEN_FORMAT,
        "arch": model.arch.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    atomic_torch_save(payload, path)
    return path


def generator_from_state_dict(sd: Mapping[str, torch.Tensor], arch: GeneratorArch | None = None,
                              source: PathLike = "<state_dict>") -> ResnetGenerator:
    sd = _clean_state_dict(sd)
    if arch is None:
        try:
            arch = infer_unet_arch(sd) if is_unet_state_dict(sd) else infer_arch_from_state_dict(sd)
        except ValueError as e:
            raise CheckpointError(f"{source}: {e}") from e
    model = build_generator(arch)
    _load_into(model, sd, source)
    return model


EXPORTED_SUFFIXES = (".onnx", ".pt2", ".ts", ".torchscript", ".jit")
PROGRAM_SUFFIXES = (".pt2", ".ts", ".torchscript", ".jit")  # archives whose loaders run what they hold


def load_generator(path: PathLike, trust: bool = False) -> nn.Module:
    """Load any generator coevo knows, with no flags. Returns a module in eval mode.

    For coevo checkpoints, safetensors files and reference CycleGAN checkpoints this
    is a :class:`ResnetGenerator`, or a :class:`~coevo.models.unet.UnetGenerator` for U-Net
    keys; ONNX exports come back as modules that run the exported graph in ONNX Runtime
    (see :mod:`coevo.deploy.exported`).

    torch.export (``.pt2``) and TorchScript archives can hold code that torch runs when it loads
    them. Unless ``trust`` is True (the CLI's ``--trust-model``), coevo never hands them to torch:
    it rebuilds the :class:`ResnetGenerator` from the tensors and architecture stored in the
    archive (:mod:`coevo.models.archive`). With ``trust=True`` the exported program itself is
    loaded (after :func:`~coevo.deploy.exported.check_pt2_archive` for ``.pt2``).
    """
    path = regular_file(path, "generator file")  # missing, a folder, a pipe or a device: refused here
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        model = _load_safetensors_generator(path)
    elif suffix in PROGRAM_SUFFIXES and not trust:
        model = _rebuild_from_archive(path, "pt2" if suffix == ".pt2" else "torchscript")
    elif suffix in EXPORTED_SUFFIXES:
        from ..deploy.exported import load_exported

        return load_exported(path, trust=trust)
    else:
        obj = safe_torch_load(path)
        if isinstance(obj, dict) and obj.get("format") == GEN_FORMAT:
            arch, sd = _checkpoint_parts(obj, path)
            model = generator_from_state_dict(sd, arch_from_dict(AnyGeneratorArch, arch, path), path)
        elif isinstance(obj, dict) and obj.get("format") == DISC_FORMAT:
            raise CheckpointError(f"{path} is a coevo discriminator (D_A/D_B), not a generator; give the G_A or G_B "
                                  "file of the run")
        elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()) \
                and is_unet_state_dict(_clean_state_dict(obj)):
            model = generator_from_state_dict(obj, None, path)
            a = model.arch
            (log.debug if str(path) in _REPORTED else log.info)(
                "loaded reference U-Net checkpoint %s (inferred %d down-samplings, ngf %d, %s norm, %d->%d "
                "channels%s; dropout has no weights, so it is taken as off)", path, a.num_downs, a.ngf, a.norm,
                a.in_channels, a.out_channels, "" if a.is_full else ", channel-pruned")
            _REPORTED.add(str(path))
        elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            model = generator_from_state_dict(obj, None, path)
            a = model.arch
            # said once per file: a run loads its teacher in every stage
            (log.debug if str(path) in _REPORTED else log.info)(
                "loaded reference checkpoint %s (inferred ngf %d, %d residual blocks, %s norm, %s, %d->%d "
                "channels%s)", path, a.ngf, a.n_blocks, a.norm, "dropout" if a.dropout else "no dropout",
                a.in_channels, a.out_channels, "" if a.is_full else ", channel-pruned")
            _REPORTED.add(str(path))
        else:
            raise CheckpointError(
                f"{path} is neither a coevo generator nor a CycleGAN state_dict "
                f"(top-level keys: {sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__})"
            )
    _check_finite_weights(model, path)
    return model.eval()


def _rebuild_from_archive(path: Path, kind: str) -> ResnetGenerator:
    """The generator whose weights a .pt2 or TorchScript archive stores, read as data (nothing runs)."""
    from .archive import UntrustedArchiveError, read_archive

    try:
        arch, sd = read_archive(path, kind)
    except UntrustedArchiveError as e:
        raise CheckpointError(str(e)) from e
    model = generator_from_state_dict(sd, None if arch is None else arch_from_dict(AnyGeneratorArch, arch, path), path)
    log.info("%s: rebuilt the generator from the weights stored in the file; its exported program is not run "
             "(pass --trust-model to run the program itself)", path)
    return model


def _load_safetensors_generator(path: Path) -> ResnetGenerator:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        sd = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"cannot read {path} as safetensors ({e}); the file may be truncated") from e
    arch = None
    if "arch" in meta:
        try:
            arch = json.loads(meta["arch"])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} has malformed architecture metadata (not JSON: {e}); the file is "
                                  "corrupt or was not written by coevo; re-export it") from e
        arch = arch_from_dict(AnyGeneratorArch, arch, path)
    return generator_from_state_dict(sd, arch, path)


# ----------------------------------------------------------------------------- discriminators
def save_discriminator(model: NLayerDiscriminator, path: PathLike) -> Path:
    payload = {
        "format": DISC_FORMAT,
        "arch": model.arch.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_torch_save(payload, path)
    return Path(path)


def load_discriminator(path: PathLike) -> NLayerDiscriminator:
    """Load a coevo discriminator or a reference ``latest_net_D_*.pth``."""
    path = Path(path)
    obj = safe_torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == DISC_FORMAT:
        arch, sd = _checkpoint_parts(obj, path)
        arch = arch_from_dict(DiscriminatorArch, arch, path)
    elif isinstance(obj, dict) and obj.get("format") == GEN_FORMAT:
        raise CheckpointError(f"{path} is a coevo generator, not a discriminator")
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = _clean_state_dict(obj)
        try:
            arch = infer_discriminator_arch(sd)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from e
    else:
        raise CheckpointError(f"{path} is not a discriminator checkpoint")
    model = NLayerDiscriminator(arch)
    _load_into(model, _clean_state_dict(sd), path)
    _check_finite_weights(model, path)
    return model.eval()


def save_reference_state_dict(model: nn.Module, path: PathLike) -> Path:
    """Save a bare state_dict in the reference naming (``latest_net_G_A.pth``) for other tools."""
    atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    return Path(path)
