"""Fine-tuning the compressed pair found by the search.

``finetune(search_dir, run_dir)`` reads the search run (``config.yaml``,
``teacher.json``, ``genomes/best_G_A.json``, ``genomes/best_G_B.json``),
rebuilds each generator as a physically narrower network with the teacher's
surviving weights (:func:`coevo.prune.slim`; dropped filters no longer exist,
so they cannot regrow; a search scored on a supernet, ``search.fitness: supernet``,
has its genomes cut from the supernet's weights instead, as its ``weights.json`` records),
and trains the pair with the CycleGAN losses against
the teacher's discriminators (which keep training), plus distillation
``lambda_distill * |G(x) - T(x)|`` towards the frozen teacher generators, and
optionally intermediate-feature distillation (``lambda_feature``, learned 1x1
convolutions from the student's activations to the teacher's; see
:class:`coevo.train.loop.FeatureAdapters`).
A teacher given as its two generators only gets fresh discriminators
(``model.ndf``, ``model.n_layers_d``, initialised as teacher training does,
seeded by ``seed``); ``finetune.json`` records ``"discriminators": "teacher"`` or ``"fresh"``.
That is the default recipe, ``finetune.mode: gan``. ``finetune.mode: distill`` trains the
students on distillation to the teacher alone, without discriminators, from a cache of the
teacher's outputs (:mod:`coevo.train.distill`); ``finetune.json`` records ``"recipe"``.

Model selection never looks at the test split: ``data.val_fraction`` of the
training images are held out (:func:`coevo.data.build_datasets`), and after
every epoch the pair whose outputs are closest to the teacher's there (mean L1,
both directions) is kept as ``G_A.pt`` / ``G_B.pt``.

``finetune_genomes(cfg, teacher_paths, genomes, run_dir)`` is the same recipe
for genomes from anywhere (L1-norm or random baselines): every method is
fine-tuned by the same code.

Writes: config.yaml, checkpoint.pt, log.jsonl (losses and val metrics),
samples/, genomes/G_A.json, genomes/G_B.json, G_A.pt, G_B.pt, finetune.json.
"""
from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

import torch

from ..core import distributed
from ..errors import ConfigError
from ..config import Config, load_config
from ..data import build_datasets, domain_channels
from ..models import (DiscriminatorArch, NLayerDiscriminator, ResnetGenerator, load_discriminator,
                      load_generator, save_generator)
from ..core.files import atomic_write_text
from ..errors import CheckpointError
from ..models.family import build_generator, is_generator
from ..models.generator import scoring_mode
from ..models.teacher import TeacherPaths
from ..prune import Genome, count_macs, count_params, slim
from ..core.inputs import teacher_files
from ..core.runlock import releasing
from ..core.rng import derive_seed, torch_rng
from ..core.runs import undo_failed_start
from .common import fixed_images, open_run_dir
from .init import init_weights
from .loop import STREAM_FRESH_D, CycleGANNets, CycleGANTrainer, GeneratorPair, LoopSettings

log = logging.getLogger(__name__)

# Config parts that determine the fine-tuned weights: resuming with other values is refused.
FINETUNE_SECTIONS = ("seed", "data", "model", "finetune")
DIRECTIONS = ("G_A", "G_B")


def _short(value) -> str:
    """A metric or a dict of metrics for a log line: 4 significant digits, not 17."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_short(v)}" for k, v in value.items()) or "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------- inputs
def read_search_dir(search_dir: Path, overrides: Sequence[str] = ()):
    """(config, teacher paths, {"G_A": genome, "G_B": genome}) of a search run."""
    search_dir = Path(search_dir)
    if not search_dir.is_dir():
        raise FileNotFoundError(f"search run not found: {search_dir} (give the --out folder of `coevo search`)")
    for need in ("config.yaml", "teacher.json", "genomes/best_G_A.json", "genomes/best_G_B.json"):
        if not (search_dir / need).is_file():
            raise FileNotFoundError(
                f"{search_dir} is not a finished search run: {need} is missing. "
                "Run (or resume) `coevo search` into it first"
            )
    cfg = load_config(search_dir / "config.yaml", overrides)
    try:
        teacher = TeacherPaths.from_dict(json.loads((search_dir / "teacher.json").read_text()))
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{search_dir / 'teacher.json'} is not a teacher description: {e}") from e
    genomes = {k: Genome.load_json(search_dir / "genomes" / f"best_{k}.json") for k in DIRECTIONS}
    return cfg, teacher, genomes


def _load_trainable(path: Path) -> torch.nn.Module:
    model = load_generator(path)
    if not is_generator(model):
        raise CheckpointError(f"{path} is an exported model; fine-tuning needs the trainable teacher checkpoint")
    return model


def _describe(model: ResnetGenerator, size: int) -> Dict[str, Any]:
    return {"widths": dict(model.arch.widths), "params": count_params(model),
            "macs": count_macs(model.arch, size, size, convention="published")}


# ----------------------------------------------------------------------------- selection
class ValidationSelector:
    """Epoch hook: distance to the teacher on held-out training images; keeps the best pair.

    Images: ``val_A`` / ``val_B`` NCHW in [-1, 1]. Metrics: ``val_l1_A`` = mean
    |G_A(a) - T_A(a)|, ``val_l1_B`` likewise, ``val_l1`` their mean (lower is
    better), ``val_cycle_A/B`` = mean |G_B(G_A(a)) - a| (reported, not selected on).
    Teacher and students run in ``reference_mode`` alike (``model.reference_mode``; in train mode one image
    per forward, as the reference's test script), each measurement leaving the students as it found them
    (:func:`coevo.models.generator.scoring_mode`).
    """

    def __init__(self, val_A: torch.Tensor, val_B: torch.Tensor, teacher: GeneratorPair, out_dir: Path,
                 device: torch.device, select_on: str = "val", batch: int = 8,
                 extra: Mapping[str, Any] | None = None, reference_mode: str = "eval") -> None:
        self.device, self.select_on, self.reference_mode = device, select_on, reference_mode
        self.batch = 1 if reference_mode == "train" else batch  # batch statistics must not mix images
        self.out_dir = Path(out_dir)
        self.extra = dict(extra or {})
        self.val_A, self.val_B = val_A, val_B
        self.target_B = self._run(teacher.G_A, val_A)
        self.target_A = self._run(teacher.G_B, val_B)
        self.best_epoch = 0
        self.best_score = math.inf
        self.best_metrics: Dict[str, float] = {}
        self.best_state: Dict[str, Dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def _run(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        model.to(self.device)
        with scoring_mode(model, self.reference_mode):
            return torch.cat([model(images[i:i + self.batch].to(self.device)).cpu()
                              for i in range(0, len(images), self.batch)])

    def evaluate(self, G_A: torch.nn.Module, G_B: torch.nn.Module) -> Dict[str, float]:
        fake_B, fake_A = self._run(G_A, self.val_A), self._run(G_B, self.val_B)
        m = {
            "val_l1_A": float((fake_B - self.target_B).abs().mean()),
            "val_l1_B": float((fake_A - self.target_A).abs().mean()),
            "val_cycle_A": float((self._run(G_B, fake_B) - self.val_A).abs().mean()),
            "val_cycle_B": float((self._run(G_A, fake_A) - self.val_B).abs().mean()),
        }
        m["val_l1"] = 0.5 * (m["val_l1_A"] + m["val_l1_B"])
        return m

    def __call__(self, epoch: int, nets: CycleGANNets) -> Dict[str, float]:
        metrics = self.evaluate(nets.G_A, nets.G_B) if len(self.val_A) else {}
        score = metrics.get("val_l1", math.inf)
        # ``<`` is False for NaN: a diverged epoch is never kept.
        if self.select_on == "last" or score < self.best_score:
            self.best_epoch, self.best_score, self.best_metrics = epoch, score, dict(metrics)
            self.best_state = {k: {n: v.detach().cpu().clone() for n, v in getattr(nets, k).state_dict().items()}
                               for k in DIRECTIONS}
            self.save_best(nets)
        return {**metrics, "best_epoch": self.best_epoch}

    def save_best(self, nets: CycleGANNets) -> None:
        """Write the kept pair as G_A.pt / G_B.pt (from ``best_state``, in architectures of ``nets``)."""
        for k in DIRECTIONS:
            model = build_generator(getattr(nets, k).arch)
            model.load_state_dict(self.best_state[k])
            save_generator(model.eval(), self.out_dir / f"{k}.pt",
                           extra={**self.extra, "epoch": self.best_epoch, **self.best_metrics})

    def state_dict(self) -> Dict[str, Any]:
        return {"best_epoch": self.best_epoch, "best_score": self.best_score,
                "best_metrics": dict(self.best_metrics), "best_state": self.best_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_epoch = int(state["best_epoch"])
        self.best_score = float(state["best_score"])
        self.best_metrics = dict(state["best_metrics"])
        self.best_state = {k: dict(v) for k, v in state["best_state"].items()}


# ----------------------------------------------------------------------------- data
def _split(cfg: Config, channels=(3, 3)):
    """(training split, held-out {"A": NCHW, "B": NCHW} in [-1, 1], split sizes).

    The held-out split is the data module's (:func:`coevo.data.build_datasets`),
    shared by every stage; the test split is never read.
    """
    splits = build_datasets(cfg.data, seed=cfg.seed, channels=channels)  # (A, B) as the teacher reads them
    if splits.val is None and cfg.finetune.select_on == "val":
        raise ConfigError(
            f"finetune.select_on=val needs held-out training images, but data.val_fraction="
            f"{cfg.data.val_fraction} leaves none; raise data.val_fraction or set finetune.select_on=last"
        )
    val = {"A": torch.empty(0), "B": torch.empty(0)}
    if splits.val is not None:
        # Item i holds A image i % |A| and B image i % |B|: take every image once.
        val = {"A": torch.stack([splits.val[i]["A"] for i in range(len(splits.val.A_paths))]),
               "B": torch.stack([splits.val[i]["B"] for i in range(len(splits.val.B_paths))])}
    sizes = {"n_train_A": len(splits.train.A_paths), "n_train_B": len(splits.train.B_paths),
             "n_val_A": len(val["A"]), "n_val_B": len(val["B"]), "val_fraction": cfg.data.val_fraction}
    return splits.train, val, sizes


def _discriminators(teacher_paths: TeacherPaths, cfg: Config, channels=(3, 3)):
    """(D_A, D_B, "teacher") when the teacher has them, else fresh ones and "fresh".

    Fresh discriminators follow ``cfg.model`` (ndf, n_layers_d) and the teacher
    training's N(0, train.init_gain) initialisation, drawn from their own seed stream.
    """
    if teacher_paths.has_discriminators:
        return load_discriminator(teacher_paths.D_A), load_discriminator(teacher_paths.D_B), "teacher"
    rng = torch_rng(derive_seed(cfg.seed, STREAM_FRESH_D))
    # D_A judges domain B images, D_B domain A ones: each reads its domain's channels (``channels`` = (A, B))
    arch_A, arch_B = (DiscriminatorArch(ndf=cfg.model.ndf, n_layers=cfg.model.n_layers_d, in_channels=int(c))
                      for c in (channels[1], channels[0]))
    log.info("the teacher has no discriminators: fine-tuning against fresh ones (ndf %d, %d layers)", arch_A.ndf,
             arch_A.n_layers)
    return (init_weights(NLayerDiscriminator(arch_A), rng, cfg.train.init_gain),
            init_weights(NLayerDiscriminator(arch_B), rng, cfg.train.init_gain), "fresh")


# derive_seed stream of students re-initialised by finetune.init=scratch (apart from the loop's streams)
STREAM_SCRATCH = 101


def _scratch_pair(teacher: GeneratorPair, teacher_paths: TeacherPaths, genomes: Mapping[str, Any], cfg: Config):
    """:func:`_slim_pair` for ``finetune.init: scratch``: the genomes' widths, weights drawn from
    N(0, train.init_gain) as teacher training draws them, seeded by the config's seed."""
    rng = torch.Generator().manual_seed(derive_seed(cfg.seed, STREAM_SCRATCH))
    students = {k: init_weights(slim(getattr(teacher, k), genomes[k]), rng, cfg.train.init_gain) for k in DIRECTIONS}
    if cfg.finetune.mode == "distill":
        return teacher, GeneratorPair(students["G_A"], students["G_B"]), "none"
    D_A, D_B, origin = _discriminators(teacher_paths, cfg, domain_channels(teacher.G_A.arch))
    return teacher, CycleGANNets(students["G_A"], students["G_B"], D_A, D_B), origin


def _slim_pair(teacher_paths: TeacherPaths, genomes: Mapping[str, Any], cfg: Config,
               weights: Mapping[str, Path] | None = None):
    """(frozen teacher generators, students + discriminators to train, "teacher" | "fresh").

    The distill recipe trains no discriminators: its students come as a :class:`GeneratorPair`, "none".
    """
    teacher = GeneratorPair(_load_trainable(teacher_paths.G_A), _load_trainable(teacher_paths.G_B))
    if cfg.finetune.init == "scratch":
        return _scratch_pair(teacher, teacher_paths, genomes, cfg)
    # the students are cut from the weights the search scored them with: the supernet's when it used one
    cut = teacher if weights is None else GeneratorPair(_load_trainable(weights["G_A"]),
                                                        _load_trainable(weights["G_B"]))
    if cfg.finetune.mode == "distill":
        return teacher, GeneratorPair(slim(cut.G_A, genomes["G_A"]), slim(cut.G_B, genomes["G_B"])), "none"
    D_A, D_B, origin = _discriminators(teacher_paths, cfg, domain_channels(teacher.G_A.arch))
    # slim() copies the kept filters into new, narrower layers: dropped filters cannot regrow.
    nets = CycleGANNets(slim(cut.G_A, genomes["G_A"]), slim(cut.G_B, genomes["G_B"]), D_A, D_B)
    return teacher, nets, origin


def _sizes(teacher: GeneratorPair, nets: CycleGANNets, size: int) -> Dict[str, Any]:
    out = {}
    for k in DIRECTIONS:
        t, s = _describe(getattr(teacher, k), size), _describe(getattr(nets, k), size)
        out[k] = {"teacher": t, "student": s, "macs_ratio": s["macs"] / t["macs"],
                  "params_ratio": s["params"] / t["params"]}
    return out


# ----------------------------------------------------------------------------- entry points
def finetune(search_dir: str | Path, out_dir: str | Path, resume: bool = False, overrides: Sequence[str] = (),
             force: bool = False) -> Path:
    """Fine-tune the search run's best pair; returns the run folder (see the module docstring).

    ``overrides``: ``key=value`` strings applied to the search run's config
    (e.g. ``"finetune.epochs=3"``). ``resume`` continues an interrupted run
    (bit-identical result); ``force`` replaces an existing one. Raises
    :class:`coevo.train.loop.TrainingError` when a loss becomes NaN/inf.
    """
    search_dir = Path(search_dir)
    cfg, teacher_paths, genomes = read_search_dir(search_dir, overrides)
    own = Path(out_dir) / "config.yaml"
    if resume and own.is_file():  # the run's resolved config: no need to repeat the --set values
        cfg = load_config(own, overrides)
    return finetune_genomes(cfg, teacher_paths, genomes, out_dir, resume=resume, force=force,
                            source={"search_dir": str(search_dir.resolve())})


@releasing
def finetune_genomes(cfg: Config, teacher_paths: TeacherPaths, genomes: Mapping[str, Genome],
                     out_dir: str | Path, resume: bool = False, force: bool = False,
                     source: Mapping[str, Any] | None = None) -> Path:
    """Fine-tune the pair ``genomes`` (``{"G_A": Genome, "G_B": Genome}``) cut from the teacher.

    The one fine-tuning recipe, whatever chose the genomes (the search, L1-norm
    or random baselines): same losses, data, selection and report as
    :func:`finetune`. ``source``: JSON-able description of where the genomes
    come from, merged into ``finetune.json`` and the saved generators' extras.
    The genomes are also written to ``genomes/G_A.json`` / ``genomes/G_B.json``.
    Under torchrun every rank calls it with the same arguments (DDP, see
    :mod:`coevo.train.loop`); rank 0 selects the model and writes the folder.
    """
    missing = [k for k in DIRECTIONS if k not in genomes]
    if missing:
        raise ValueError(f"finetune_genomes needs a genome for each of {DIRECTIONS}; missing {missing}")
    from ..search.context import check_sizes_for, refuse_unet

    check_sizes_for(genomes["G_A"].arch, cfg, search=False)  # a U-Net trains on crops of its side multiple
    if cfg.finetune.lambda_feature > 0:
        refuse_unet(genomes["G_A"].arch, "feature distillation (finetune.lambda_feature > 0)",
                    "set finetune.lambda_feature=0 (output distillation, finetune.lambda_distill, works)")
    from ..prune.slim import check_genome_fits

    for k in DIRECTIONS:  # before the run folder exists: a genome of another network is no start
        check_genome_fits(_load_trainable(getattr(teacher_paths, k)).arch, genomes[k], f"the teacher's {k}")
    source = dict(source or {})
    from ..search.supernet import search_weights, supernet_weights

    # a search scored on a supernet: the students are cut from it (not from the teacher) unless drawn afresh;
    # source["supernet_dir"] cuts genomes chosen elsewhere (e.g. a baseline's) from a supernet the same way
    weights = None
    if cfg.finetune.init != "scratch":
        weights = search_weights(source.get("search_dir"))
        if weights is None and source.get("supernet_dir"):
            weights = supernet_weights(source["supernet_dir"])
    files = {**teacher_files(teacher_paths), **{f"supernet {k}": p for k, p in (weights or {}).items()}}
    if weights is not None:
        source["student_weights"] = {"source": "supernet", **{k: str(p) for k, p in weights.items()}}
    settings = LoopSettings.from_section(cfg.finetune, "finetune", cfg.seed, cfg.device, cfg.data.num_workers,
                                         cfg.log)
    cfg = copy.deepcopy(cfg)  # data.root is resolved by open_run_dir; the caller's config stays as it was
    built = {}  # rank 0's data, networks and model selection, built (and checked) before anything else runs

    def start():
        with undo_failed_start(out_dir, resume):
            # the folder first: without data.root it builds the built-in set inside it, as train does
            out = open_run_dir(cfg, out_dir, resume, force, FINETUNE_SECTIONS, command="finetune",
                               files=files, genomes=genomes,
                               inputs={"search run": source.get("search_dir"),
                                       "genome file": list((source.get("genomes_from") or {}).values())})
            built["split"] = _split(cfg, domain_channels(genomes["G_A"].arch))
            val = built["split"][1]
            for k in DIRECTIONS:
                genomes[k].save_json(out / "genomes" / f"{k}.json")

            teacher, nets, discriminators = _slim_pair(teacher_paths, genomes, cfg, weights)
            selector = ValidationSelector(val["A"], val["B"], teacher, out, torch.device(cfg.device),
                                          cfg.finetune.select_on, extra={"stage": "finetune", **source},
                                          reference_mode=cfg.model.reference_mode)
            val_before = selector.evaluate(nets.G_A, nets.G_B) if len(val["A"]) else {}
        built.update(teacher=teacher, nets=nets, selector=selector)
        return out, cfg, discriminators, val_before

    # Under torchrun rank 0 prepares the folder and selects the model; every rank trains.
    out, cfg, discriminators, val_before = distributed.on_main(start)
    train_set, val, split = built["split"] if built else _split(cfg, domain_channels(genomes["G_A"].arch))
    if built:
        teacher, nets, selector = built["teacher"], built["nets"], built["selector"]
    else:
        (teacher, nets, _), selector = _slim_pair(teacher_paths, genomes, cfg, weights), None
    recipe = cfg.finetune.mode
    if recipe == "distill":
        from .distill import DistillTrainer, cache_images, deterministic_crops

        train_set = deterministic_crops(train_set)  # why: coevo.train.distill's docstring
        trainer = DistillTrainer(nets, settings, out, teacher, hook=selector, cache_images=cache_images(train_set),
                                 flips=cfg.data.flip)
    else:
        trainer = CycleGANTrainer(nets, settings, out, teacher=teacher, hook=selector)
    if resume:
        trainer.resume()
    log.info("fine-tuning the slim pair (recipe %s) on %d+%d training images (%d+%d held out); held-out "
             "before: %s", recipe, split["n_train_A"], split["n_train_B"], split["n_val_A"], split["n_val_B"],
             _short(val_before))
    samples = fixed_images(train_set.subset(augment=False), settings.sample_images) if built else None
    result = trainer.fit(train_set, samples)
    header = {"stage": "finetune", **source, "teacher": teacher_paths.to_dict(), "recipe": recipe,
              "init": cfg.finetune.init,
              "discriminators": discriminators, "val_before": val_before, "split": split}
    if recipe == "distill":
        header["teacher_cache"] = trainer.targets.stats()
    distributed.on_main(_finish, out, cfg, result, selector, nets, teacher, header)
    return out


def _finish(out: Path, cfg: Config, result, selector: ValidationSelector, nets: CycleGANNets | GeneratorPair,
            teacher: GeneratorPair, header: Dict[str, Any]) -> None:
    """Rank 0: the kept pair and ``finetune.json`` (``header``: stage, source, teacher, val_before, ...)."""
    selector.save_best(nets)
    report = {
        **header,
        "select_on": cfg.finetune.select_on,
        "best_epoch": selector.best_epoch,
        "val": selector.best_metrics,
        "epochs": result.epochs,
        "steps": result.global_step,
        "train_seconds": round(result.seconds, 2),
        "lambda_distill": cfg.finetune.lambda_distill,
        "lambda_feature": cfg.finetune.lambda_feature,
        "image_size": cfg.data.crop_size,
        "mac_convention": "published (transposed conv counted per output pixel)",
        "models": _sizes(teacher, nets, cfg.data.crop_size),
        "files": {k: f"{k}.pt" for k in DIRECTIONS},
        "genomes": {k: f"genomes/{k}.json" for k in DIRECTIONS},
    }
    atomic_write_text(out / "finetune.json", json.dumps(report, indent=2) + "\n")
    log.info("fine-tune (%s) done in %.0f s: best epoch %d, val L1 to teacher %s -> %s", header["recipe"],
             result.seconds, selector.best_epoch, _short(header["val_before"].get("val_l1")),
             _short(selector.best_metrics.get("val_l1")))
