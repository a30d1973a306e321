"""Training the teacher CycleGAN from scratch (Zhu et al. 2017), when the user has none.

``train_teacher(cfg, run_dir)`` writes into ``run_dir``::

    config.yaml          resolved config
    checkpoint.pt        everything needed for an exact --resume
    log.jsonl            loss records (per ``train.log_every`` steps and per epoch)
    samples/epoch_XXX.png  real_A | fake_B | rec_A | real_B | fake_A | rec_B on fixed training images
    G_A.pt G_B.pt D_A.pt D_B.pt                      coevo checkpoints (architecture included)
    latest_net_{G_A,G_B,D_A,D_B}.pth                 bare state_dicts, reference naming, for other tools
    summary.json         epochs, steps, time, final losses, sizes

:func:`coevo.models.teacher.find_teacher` accepts the folder as a teacher.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

from ..core import distributed
from ..config import Config, ModelConfig
from ..models import DiscriminatorArch, GeneratorArch, NLayerDiscriminator, ResnetGenerator
from ..core.files import atomic_write_text
from ..models.io import save_discriminator, save_generator, save_reference_state_dict
from ..prune import count_macs, count_params
from ..core.runlock import releasing
from ..core.rng import derive_seed, torch_rng
from ..core.runs import undo_failed_start
from .common import fixed_images, full_train_dataset, open_run_dir
from .init import init_weights
from .loop import STREAM_INIT, CycleGANNets, CycleGANTrainer, LoopSettings

log = logging.getLogger(__name__)

# Config parts that determine the teacher's weights: resuming with other values is refused.
TEACHER_SECTIONS = ("seed", "data", "model", "train")


def build_cyclegan(model: ModelConfig, seed: int, gain: float = 0.02) -> CycleGANNets:
    """Four freshly initialised networks (N(0, gain) convs), the same for the same seed."""
    g = torch_rng(derive_seed(seed, STREAM_INIT))
    gen_arch = GeneratorArch.full(ngf=model.ngf, n_blocks=model.n_blocks)
    disc_arch = DiscriminatorArch(ndf=model.ndf, n_layers=model.n_layers_d)
    return CycleGANNets(
        G_A=init_weights(ResnetGenerator(gen_arch), g, gain),
        G_B=init_weights(ResnetGenerator(gen_arch), g, gain),
        D_A=init_weights(NLayerDiscriminator(disc_arch), g, gain),
        D_B=init_weights(NLayerDiscriminator(disc_arch), g, gain),
    )


def save_teacher(nets: CycleGANNets, out: Path) -> None:
    """coevo checkpoints (G_A.pt ...) plus reference-named state_dicts (latest_net_G_A.pth ...)."""
    for name, net in nets.as_dict().items():
        net.eval()
        if name.startswith("G"):
            save_generator(net, out / f"{name}.pt")
        else:
            save_discriminator(net, out / f"{name}.pt")
        save_reference_state_dict(net, out / f"latest_net_{name}.pth")


def _sizes(nets: CycleGANNets, size: int) -> dict:
    out = {}
    for name, net in nets.as_dict().items():
        entry = {"arch": net.arch.to_dict(), "params": count_params(net)}
        if name.startswith("G"):
            entry["macs"] = count_macs(net.arch, size, size, convention="published")
        out[name] = entry
    return out


@releasing
def train_teacher(cfg: Config, out_dir: str | Path, resume: bool = False, force: bool = False) -> Path:
    """Train a CycleGAN on ``cfg.data`` with ``cfg.model`` / ``cfg.train``; returns the run folder.

    ``resume`` continues an interrupted run from its checkpoint (bit-identical to
    an uninterrupted run); ``force`` replaces an existing run. A non-empty
    ``out_dir`` without either is refused (:class:`coevo.core.runs.RunDirError`).
    Raises :class:`coevo.train.loop.TrainingError` when a loss becomes NaN/inf.
    Under torchrun every rank calls it with the same arguments (DDP, see
    :mod:`coevo.train.loop`); rank 0 writes the folder.
    """
    cfg = copy.deepcopy(cfg)  # open_run_dir resolves data.root; the caller's config stays as it was
    settings = LoopSettings.from_section(cfg.train, "train", cfg.seed, cfg.device, cfg.data.num_workers, cfg.log)
    built = {}  # rank 0's data and networks, built (and checked) before anything else runs

    def start():
        with undo_failed_start(out_dir, resume):
            out = open_run_dir(cfg, out_dir, resume, force, TEACHER_SECTIONS, command="train")
            # The whole training split, as the reference does; fine-tuning holds out data.val_fraction of it.
            built["dataset"] = full_train_dataset(cfg)
            built["samples"] = fixed_images(built["dataset"].subset(augment=False), settings.sample_images)
            built["nets"] = build_cyclegan(cfg.model, cfg.seed, cfg.train.init_gain)
        return out, cfg

    # Under torchrun rank 0 prepares the folder (and the data); the other ranks then read the same.
    out, cfg = distributed.on_main(start)
    dataset = built["dataset"] if built else full_train_dataset(cfg)
    nets = built["nets"] if built else build_cyclegan(cfg.model, cfg.seed, cfg.train.init_gain)
    trainer = CycleGANTrainer(nets, settings, out)
    if resume:
        trainer.resume()
    log.info("training teacher: %d images per domain (A %d, B %d), %d epoch%s, run folder %s",
             len(dataset), len(dataset.A_paths), len(dataset.B_paths), settings.total_epochs,
             "" if settings.total_epochs == 1 else "s", out)
    result = trainer.fit(dataset, built.get("samples"))
    distributed.on_main(_finish, nets, out, cfg, result)
    return out


def _finish(nets: CycleGANNets, out: Path, cfg: Config, result) -> None:
    save_teacher(nets, out)
    summary = {
        "stage": "teacher",
        "name": cfg.name,
        "epochs": result.epochs,
        "steps": result.global_step,
        "train_seconds": round(result.seconds, 2),
        "final_epoch": {k: v for k, v in result.last_epoch.items() if k not in ("epoch", "step")},
        "image_size": cfg.data.crop_size,
        "mac_convention": "published (transposed conv counted per output pixel)",
        "networks": _sizes(nets, cfg.data.crop_size),
        "files": {k: f"{k}.pt" for k in ("G_A", "G_B", "D_A", "D_B")},
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    log.info("teacher done in %.0f s: %s", result.seconds, out)
