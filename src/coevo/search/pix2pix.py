"""The pix2pix search: ONE population of genomes for the one generator (there is no cycle partner).

A candidate genome of the teacher G (a U-Net, or any generator coevo prunes) is cut from the
teacher's weights (:func:`coevo.prune.slim`) and scored on ``search.eval_images`` held-out
training pairs ``(x, y)`` (``val/``, or the held-out part of ``train/``; never ``test/``):

* ``perceptual`` = mean over pairs of metric(candidate(x), teacher(x)); the metric is the teacher's
  conditional discriminator's feature distance when the teacher has ``latest_net_D.pth``
  (the discriminator reads ``x|output``, 6 channels), else what ``search.perceptual`` resolves to
  offline (LPIPS when its backbone file is present, else the teacher's own encoder features, else L1);
* ``l1`` = mean |candidate(x) - y|, the distance to the paired target (kept in the ``cycle`` field of
  :class:`~coevo.search.fitness.FitnessTerms`, weighted by ``search.weight_cycle``);
* ``quality`` = weight_perceptual * perceptual + weight_cycle * l1, ``fitness`` = 1 / quality.

Every genome meets the MAC budget (``search.macs_ratio`` of the teacher, repaired as the CycleGAN
search repairs: :class:`~coevo.search.population.Repairer`); generations breed with the same
operators (:class:`~coevo.search.operators.Breeder`) and keep ``search.elitism`` elites. Candidates
run in ``model.reference_mode`` (train: batch statistics per image and fixed dropout masks, the same
for every candidate). One seeded numpy generator drives everything; its state is in ``state.pt``
after every generation, so a resumed search ends as the uninterrupted one.

``run_pix2pix_search(cfg, out, teacher)`` writes config.yaml, data.json, teacher.json (``kind:
pix2pix``), history.jsonl, state.pt, genomes/best_G.json and search.json.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..config import Config, dump_config, load_config
from ..core.files import atomic_write_text
from ..core.rng import derive_seed, torch_rng
from ..core.runs import append_jsonl, read_jsonl, undo_failed_start
from ..errors import ConfigError
from ..models.pix2pix import Pix2PixPaths, find_pix2pix_teacher, load_pix2pix_discriminator, load_pix2pix_generator
from ..prune import Genome, l1_genome_for_macs, slim
from ..prune.baselines import filter_importance
from .context import MACS_CONVENTION, Budget, search_budget
from .fitness import FitnessTerms, Objective, check_terms, compute_terms, genome_hex
from .operators import Breeder
from .population import Candidate, Population, Repairer, initial_population
from .state import PopulationState, SearchState, load_state, save_state

log = logging.getLogger(__name__)

NAME = "G"
STREAM_EVAL_PICK = 21
STREAM_EVAL_DROPOUT = 22
# Config parts that decide the search's result: resuming with other values is refused.
SEARCH_SECTIONS = ("seed", "data", "model", "search", "pix2pix")


class ConditionalFeatures(nn.Module):
    """A pix2pix discriminator seen as a feature extractor of outputs: ``features(y) = D.features(x|y)``
    for the fixed inputs ``x`` (what :class:`~coevo.evaluation.perceptual.DiscriminatorMetric` reads)."""

    def __init__(self, discriminator: nn.Module, inputs: torch.Tensor) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.register_buffer("inputs", inputs)

    def features(self, y: torch.Tensor) -> List[torch.Tensor]:
        return self.discriminator.features(torch.cat([self.inputs[: y.shape[0]], y], 1))


@dataclass
class Pix2PixSearchContext:
    """The frozen inputs of every evaluation: the teacher, the pairs, the metric and its target."""

    teacher: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    teacher_output: torch.Tensor
    metric: nn.Module
    target: List[torch.Tensor]
    importance: Dict[str, np.ndarray]
    budget: Budget
    metric_name: str
    reference_mode: str = "eval"
    dropout_seed: int = 0


def _pick(n: int, k: int, seed: int) -> List[int]:
    if k >= n:
        return list(range(n))
    rng = np.random.default_rng([STREAM_EVAL_PICK, int(seed)])
    return sorted(int(i) for i in rng.choice(n, size=k, replace=False))


def eval_pairs(cfg: Config, size: int) -> Dict[str, torch.Tensor]:
    """``search.eval_images`` held-out training pairs (``val/``, else the held-out part of ``train/``),
    chosen by ``cfg.seed``, at ``size`` x ``size``, as ``{"A": inputs, "B": targets}``."""
    from ..data.aligned import AlignedDataset, build_aligned_datasets, stack_pairs
    from ..data.errors import DataError

    splits = build_aligned_datasets(cfg.data, cfg.seed)
    if splits.val is None:
        raise DataError(f"the pix2pix search scores candidates on held-out training pairs, and {splits.root} has no "
                        f"val/ and data.val_fraction is {cfg.data.val_fraction}: add val/ or set it above 0")
    ds: AlignedDataset = copy.copy(splits.val)
    ds.load_size = ds.crop_size = int(size)
    return stack_pairs(ds.subset(_pick(len(ds), cfg.search.eval_images, cfg.seed)))


def _run(net: nn.Module, x: torch.Tensor, mode: str, dropout_seed: int) -> torch.Tensor:
    """``net(x)`` as outputs are scored: eval mode on the batch, or train mode one image at a time with
    dropout masks from a fixed seed (every candidate sees the same masks)."""
    from ..models.generator import scoring_mode
    from ..train.pix2pix import seed_dropout

    with torch.inference_mode():
        if mode == "eval":
            return net.eval()(x).float()
        seed_dropout(net, torch_rng(dropout_seed))
        with scoring_mode(net, mode):
            return torch.cat([net(x[i:i + 1]) for i in range(x.shape[0])]).float()


def build_pix2pix_context(cfg: Config, paths: Pix2PixPaths) -> Pix2PixSearchContext:
    """Load the teacher, pick the evaluation pairs, build the metric and the budget (errors before any work)."""
    from ..evaluation.perceptual import build_perceptual, resolve_perceptual

    s = cfg.search
    if s.compute == "latency":
        raise ConfigError("the pix2pix search takes a MAC budget (search.compute=budget or reward) so far, not "
                          "search.compute=latency")
    if s.fitness != "proxy":
        raise ConfigError(f"the pix2pix search scores the inherited weights (search.fitness=proxy) so far, not "
                          f"search.fitness={s.fitness}")
    if s.tied:
        raise ConfigError("search.tied ties a ResNet's inner channels; the pix2pix search does not take it")
    teacher = load_pix2pix_generator(paths.G, dropout=cfg.pix2pix.dropout)
    arch = teacher.arch
    size = cfg.search.eval_size or cfg.data.crop_size
    multiple = getattr(arch, "size_multiple", 4)
    if size % multiple:
        raise ConfigError(f"the evaluation size {size} is not a multiple of {multiple}, which this generator needs; "
                          f"set search.eval_size (e.g. {max(multiple, size - size % multiple)})")
    budget = search_budget(arch, s)  # a latency budget refuses a U-Net in one line
    pairs = eval_pairs(cfg, size)
    dropout_seed = derive_seed(cfg.seed, STREAM_EVAL_DROPOUT)
    teacher_output = _run(teacher, pairs["A"], cfg.model.reference_mode, dropout_seed)
    name = resolve_perceptual(s.perceptual, paths.has_discriminator, s.lpips_net)
    if name == "discriminator":
        d = load_pix2pix_discriminator(paths.D, teacher).eval()
        metric = build_perceptual("discriminator", discriminator=ConditionalFeatures(d, pairs["A"]))
    elif name == "teacher-features" and not hasattr(teacher, "features"):
        log.info("pix2pix search: this generator has no encoder features to compare; using l1 to the teacher")
        name, metric = "l1", build_perceptual("l1")
    else:
        metric = build_perceptual(name, lpips_net=s.lpips_net, feature_generator=teacher)
    with torch.inference_mode():
        target = [t.float() for t in metric.embed(teacher_output)]
    log.info("pix2pix search context: %d held-out pairs at %dx%d, metric %s, %s mode", pairs["A"].shape[0], size, size,
             name, cfg.model.reference_mode)
    return Pix2PixSearchContext(teacher, pairs["A"], pairs["B"], teacher_output, metric, target,
                                filter_importance(teacher), budget, name, cfg.model.reference_mode, dropout_seed)


def evaluate_pix2pix(ctx: Pix2PixSearchContext, objective: Objective, genomes: Sequence[Genome]) -> List[FitnessTerms]:
    """Fitness of each genome (see the module docstring); a pure function of its arguments."""
    out = []
    for genome in genomes:
        with torch.no_grad():
            net = slim(ctx.teacher, genome)
        y = _run(net, ctx.inputs, ctx.reference_mode, ctx.dropout_seed)
        with torch.inference_mode():
            perceptual = float(ctx.metric.distance([e.float() for e in ctx.metric.embed(y)], ctx.target).mean())
            l1 = float((y - ctx.targets).abs().mean())
        out.append(check_terms(objective.score(perceptual, l1, *compute_terms(genome)), NAME, genome))
    return out


def _summary(pop: Population) -> Dict:
    best = pop.best()
    mean = {k: float(np.mean([getattr(c.terms, k) for c in pop.members]))
            for k in ("fitness", "perceptual", "cycle", "quality", "macs")}
    return {"best": {**best.terms.to_dict(), "l1_target": best.terms.cycle}, "mean": mean,
            "best_widths": best.genome.widths(), "unique": len({c.genome.key() for c in pop.members})}


class Pix2PixSearch:
    """The single-population evolution (see the module docstring). Call :meth:`run`, or :meth:`initialise`
    then :meth:`step`; :meth:`state` / :meth:`restore` checkpoint it."""

    def __init__(self, ctx: Pix2PixSearchContext, search_cfg, seed: int) -> None:
        from .evolve import check_search_config

        check_search_config(search_cfg)
        self.ctx, self.cfg = ctx, search_cfg
        self.objective = Objective.from_config(search_cfg, images=int(ctx.inputs.shape[0]))
        self.breeder = Breeder.from_config(search_cfg)
        self.repairer = Repairer(ctx.teacher.arch, ctx.budget, False, ctx.budget.min_channels,
                                 search_cfg.channel_multiple, search_cfg.repair, ctx.importance)
        self.rng = np.random.default_rng(int(seed))
        self.population: Optional[Population] = None
        self.cache: Dict[str, List[float]] = {}
        self.evaluations = self.cache_hits = 0
        self.generation = -1
        self.history: List[Dict] = []
        self.elapsed_s = 0.0

    def evaluate(self, genomes: Sequence[Genome]) -> List[FitnessTerms]:
        """:func:`evaluate_pix2pix` with a cache by bit string (results do not change)."""
        keys = [genome_hex(g) for g in genomes]
        new = {k: g for k, g in zip(keys, genomes) if k not in self.cache}
        for k, t in zip(new, evaluate_pix2pix(self.ctx, self.objective, list(new.values()))):
            self.cache[k] = t.to_row()
        self.evaluations += len(new)
        self.cache_hits += len(keys) - len(new)
        return [FitnessTerms.from_row(self.cache[k]) for k in keys]

    def seeds(self) -> List[Genome]:
        s = self.cfg
        if not s.seed_with_l1:
            return []
        return [l1_genome_for_macs(self.ctx.teacher, s.macs_ratio, self.ctx.budget.size, self.ctx.budget.min_channels,
                                   s.channel_multiple, MACS_CONVENTION)]

    def initialise(self) -> Dict:
        t0 = time.perf_counter()
        s = self.cfg
        pop = initial_population(NAME, self.ctx.teacher.arch, self.repairer, s.population, s.init_density, self.rng,
                                 self.seeds())
        pop.set_terms(self.evaluate(pop.genomes))
        self.population, self.generation = pop, 0
        return self._record(time.perf_counter() - t0)

    def step(self) -> Dict:
        if self.population is None:
            raise RuntimeError("call initialise() (or restore()) before step()")
        t0 = time.perf_counter()
        s, pop = self.cfg, self.population
        elites = [Candidate(pop.members[i].genome, pop.members[i].terms) for i in pop.ranking()[: s.elitism]]
        bits = self.breeder.breed(pop.bits(), pop.fitness(), s.population - len(elites), self.rng)
        children = [Candidate(self.repairer(b, self.rng)) for b in bits]
        new = Population(NAME, elites + children)
        new.set_terms(self.evaluate(new.genomes))
        self.population = new
        self.generation += 1
        return self._record(time.perf_counter() - t0)

    def _record(self, seconds: float) -> Dict:
        self.elapsed_s += seconds
        record = {"generation": self.generation, "evaluations": self.evaluations, "cache_hits": self.cache_hits,
                  "seconds": round(seconds, 4), NAME: _summary(self.population)}
        self.history.append(record)
        return record

    def best(self) -> Candidate:
        return self.population.best()

    def run(self, generations: Optional[int] = None, callback=None) -> Candidate:
        total = self.cfg.generations if generations is None else int(generations)
        while self.generation < total:
            record = self.initialise() if self.generation < 0 else self.step()
            b = record[NAME]["best"]
            log.info("pix2pix search generation %d/%d: best fitness %.4g (perceptual %.4g, l1 %.4g, %.3g MACs)",
                     self.generation, total, b["fitness"], b["perceptual"], b["cycle"], b["macs"])
            if callback is not None:
                callback(self, record)
        return self.best()

    def state(self) -> SearchState:
        pop = self.population
        return SearchState(generation=self.generation, rng_state=self.rng.bit_generator.state,
                           populations={NAME: PopulationState(np.stack(pop.bits()),
                                                              np.array([c.terms.to_row() for c in pop.members]))},
                           cache={"rows": dict(self.cache), "evaluations": self.evaluations,
                                  "cache_hits": self.cache_hits},
                           history_len=len(self.history), elapsed_s=self.elapsed_s, tied=False,
                           search_config=asdict(self.cfg))

    def restore(self, state: SearchState, history: Optional[List[Dict]] = None) -> None:
        self.rng.bit_generator.state = state.rng_state
        ps = state.populations[NAME]
        arch = self.ctx.teacher.arch
        self.population = Population(NAME, [Candidate(Genome.from_bits(arch, b), FitnessTerms.from_row(r))
                                            for b, r in zip(ps.bits, ps.terms)])
        self.cache = {k: list(v) for k, v in state.cache["rows"].items()}
        self.evaluations, self.cache_hits = int(state.cache["evaluations"]), int(state.cache["cache_hits"])
        self.generation, self.elapsed_s = state.generation, state.elapsed_s
        self.history = list(history or [])[: state.history_len]


def run_pix2pix_search(cfg: Config, out: str | Path, teacher: Optional[str | Path] = None, resume: bool = False,
                       force: bool = False, stop_after: Optional[int] = None) -> Path:
    """Run (or resume) the pix2pix search into ``out``; ``teacher``: a pix2pix teacher folder (on resume,
    default: the run's teacher.json). ``stop_after``: stop after this many generations (resumable)."""
    from ..core.inputs import check_config_file
    from ..core.outputs import check_outputs_apart, data_input
    from ..core.runlock import check_not_running, lock_run_dir
    from ..core.runs import prepare_run_dir
    from ..config import diff_configs
    from ..data.prepare import run_data
    from ..config import resolve_reference_mode

    cfg = copy.deepcopy(cfg)
    resolve_reference_mode(cfg, "pix2pix")
    with undo_failed_start(out, resume):
        check_outputs_apart(out, {"data folder": data_input(cfg.data.root, out),
                                  "teacher": None if teacher is None else Path(teacher)})
        check_not_running(out)
        run_dir = prepare_run_dir(out, resume=resume, force=force, command="search")
        lock_run_dir(run_dir)
        saved = run_dir / "config.yaml"
        old = None
        if resume and saved.is_file():
            check_config_file(run_dir)
            old = load_config(saved)
            diffs = diff_configs(old, cfg, SEARCH_SECTIONS, ignore=("search.generations",))
            if diffs:
                raise ConfigError(f"cannot resume {run_dir}: the config differs in {', '.join(diffs)}; resume with "
                                  "the run's own settings, or start a new run")
        if teacher is not None:
            paths = find_pix2pix_teacher(teacher)
        elif (run_dir / "teacher.json").is_file():
            paths = Pix2PixPaths.from_dict(json.loads((run_dir / "teacher.json").read_text()))
        else:
            raise ConfigError("no teacher: give the pix2pix teacher folder (latest_net_G.pth, latest_net_D.pth)")
        run_data(cfg.data, run_dir, resume, old.data.root if old is not None else None)
        ctx = build_pix2pix_context(cfg, paths)
        state, history = None, []
        if resume and (run_dir / "state.pt").is_file():
            state = load_state(run_dir / "state.pt")
            history = read_jsonl(run_dir / "history.jsonl")[: state.history_len]
        atomic_write_text(run_dir / "teacher.json", json.dumps(paths.to_dict(), indent=2) + "\n")
        dump_config(cfg, saved)
    search = Pix2PixSearch(ctx, cfg.search, cfg.seed)
    if state is not None:
        search.restore(state, history)
        atomic_write_text(run_dir / "history.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        log.info("resumed %s after generation %d", run_dir, state.generation)

    def checkpoint(s: Pix2PixSearch, record: Dict) -> None:
        append_jsonl(run_dir / "history.jsonl", record)
        s.best().genome.save_json(run_dir / "genomes" / f"best_{NAME}.json")
        save_state(s.state(), run_dir / "state.pt")

    target = cfg.search.generations if stop_after is None else min(cfg.search.generations, int(stop_after))
    best = search.run(target, callback=checkpoint)
    summary = {"kind": "pix2pix", "generations": search.generation, "population": cfg.search.population,
               "evaluations": search.evaluations, "cache_hits": search.cache_hits,
               "seconds": round(search.elapsed_s, 2), "metric": ctx.metric_name, "reference_mode": ctx.reference_mode,
               # train mode: every candidate and the teacher draw their dropout masks from one seeded stream
               # of their own, so a genome's fitness is a pure function of it (no noise between evaluations)
               "scoring": ("deterministic: batch statistics per image, dropout masks from a fixed stream "
                           f"(seed {ctx.dropout_seed}) for the teacher and every candidate alike"
                           if ctx.reference_mode == "train" else "deterministic: eval mode"),
               "eval_pairs": int(ctx.inputs.shape[0]), "eval_size": int(ctx.inputs.shape[-1]),
               "budget": {"macs_ratio": ctx.budget.macs_ratio, "max_macs": ctx.budget.max_macs,
                          "teacher_macs": ctx.budget.teacher_macs, "size": ctx.budget.size,
                          "convention": ctx.budget.convention, "min_channels": ctx.budget.min_channels},
               "best": {**best.terms.to_dict(), "l1_target": best.terms.cycle, "widths": best.genome.widths(),
                        "macs_ratio": best.terms.macs / ctx.budget.teacher_macs},
               "teacher": paths.to_dict(), "finished": search.generation >= cfg.search.generations}
    atomic_write_text(run_dir / "search.json", json.dumps(summary, indent=2) + "\n")
    return run_dir


# ----------------------------------------------------------------------------- coevo compress on paired data
PIX2PIX_MARKER = "pix2pix.json"  # in a compress run folder: the run is a pix2pix one (its stages below)
# The first checkpoints of its long stages: a run that fails before any of them holds nothing to resume.
PIX2PIX_UNSTARTED = ("teacher/checkpoint.pt", "search/state.pt", "finetune/checkpoint.pt")


def is_pix2pix_run(folder: str | Path) -> bool:
    """True for a ``coevo compress`` folder that :func:`compress_pix2pix` started."""
    return (Path(folder) / PIX2PIX_MARKER).is_file()


def compress_pix2pix(cfg: Config, out: str | Path, teacher: Optional[str | Path] = None, resume: bool = False,
                     force: bool = False) -> Dict:
    """The pix2pix pipeline into ``out``: [train a teacher] -> search -> fine-tune -> export -> bench -> report.

    ``teacher``: a pix2pix teacher folder; None trains one on ``cfg.data`` in ``out/teacher``. The data
    are the aligned ``data.root`` (never written into), else the built-in paired set built in
    ``out/data``. Stages that finished are skipped on ``resume``; an interrupted one resumes from its
    checkpoint. The export and bench stages are the CycleGAN pipeline's (:mod:`coevo.pipeline`): the
    student exported for ``export.target`` (the cpu target adds INT8 ONNX, calibrated on input halves of
    training pairs and checked on the test pairs' input halves against their targets), then teacher
    (eager) and student (eager and its deployed artifact) timed interleaved in one process. Writes
    ``out/report.json``/``report.md`` (:func:`coevo.evaluation.paired.build_pix2pix_report`) and
    ``out/compress.json`` (the student's MACs against the teacher's, test PSNR of both, the export and
    speed records), and returns the latter.
    """
    from ..config import resolve_reference_mode
    from ..core.runs import prepare_run_dir
    from ..data.aligned import ensure_aligned_root
    from ..evaluation.paired import build_pix2pix_report
    from ..train.pix2pix import finetune_pix2pix, train_pix2pix

    cfg = copy.deepcopy(cfg)
    out = prepare_run_dir(out, resume=resume, force=force, resume_file=PIX2PIX_MARKER, command="compress")
    if cfg.data.layout == "auto":
        cfg.data.layout = "aligned"
    if not cfg.data.root:
        cfg.data.root = str((out / "data").resolve())
    resolve_reference_mode(cfg, "pix2pix")
    ensure_aligned_root(cfg.data)
    marker = out / PIX2PIX_MARKER
    if resume:
        recorded = json.loads(marker.read_text())
        teacher = teacher if teacher is not None else recorded.get("teacher")
    else:
        atomic_write_text(marker, json.dumps({"kind": "pix2pix", "teacher": None if teacher is None else
                                              str(Path(teacher).resolve())}, indent=2) + "\n")
    stages: Dict[str, Dict] = {}
    t0 = time.perf_counter()
    if teacher is None:
        teacher_dir = out / "teacher"
        if not (teacher_dir / "summary.json").is_file():
            train_pix2pix(cfg, teacher_dir, resume=(teacher_dir / "config.yaml").is_file())
        teacher = teacher_dir
        stages["teacher"] = {"trained": True, "path": str(teacher_dir)}
    else:
        stages["teacher"] = {"trained": False, "path": str(Path(teacher).resolve())}
    search_dir = out / "search"
    done = (search_dir / "search.json").is_file() and json.loads((search_dir / "search.json").read_text())["finished"]
    if not done:
        run_pix2pix_search(cfg, search_dir, teacher, resume=(search_dir / "config.yaml").is_file())
    stages["search"] = json.loads((search_dir / "search.json").read_text())["best"]
    ft_dir = out / "finetune"
    if not (ft_dir / "finetune.json").is_file():
        finetune_pix2pix(search_dir, ft_dir, cfg, resume=(ft_dir / "config.yaml").is_file())
    record = json.loads((ft_dir / "finetune.json").read_text())
    paths = find_pix2pix_teacher(teacher)
    export = _stage(out, "export", lambda path: _export_pix2pix(cfg, ft_dir / "G.pt", path))
    speed = _stage(out, "bench", lambda path: _bench_pix2pix(cfg, paths, ft_dir / "G.pt", out / "export", path))
    report = build_pix2pix_report(out, cfg, paths.G, ft_dir / "G.pt")
    summary = {
        "kind": "pix2pix", "teacher": stages["teacher"], "search": stages["search"],
        "macs_ratio": record["macs_ratio"], "macs": record["macs"], "widths": record["widths"],
        "test": record["test"], "reference_mode": record["reference_mode"],
        "export": {fmt: {k: e[k] for k in ("path", "max_abs_diff", "ok")} for fmt, e in export["formats"].items()},
        "deployed": export["deployed"], "speed": speed, "checks": report["checks"],
        "all_checks_pass": report["all_checks_pass"], "report": str(out / "report.md"),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_text(out / "compress.json", json.dumps(summary, indent=2) + "\n")
    log.info("pix2pix compressed to %.3f of the teacher's MACs: test PSNR %.2f dB (teacher %.2f dB), %.2fx the "
             "teacher's eager speed (%s); %s", summary["macs_ratio"], record["test"]["student"]["psnr"],
             record["test"]["teacher"]["psnr"], speed["speedup_vs_teacher_eager"], speed["backend"], out)
    return summary


def _stage(out: Path, name: str, fn) -> Dict:
    """``out/name``'s record: read when the stage finished (its ``stage.json``), else the folder is
    redone from scratch (export and bench are cheap and write no checkpoint) and the record written."""
    from ..core.runs import remove_run_entry

    path = out / name
    done = path / "stage.json"
    if done.is_file():
        return json.loads(done.read_text())["record"]
    if path.exists():
        remove_run_entry(path, out)
    path.mkdir(parents=True)
    t0 = time.perf_counter()
    record = fn(path)
    atomic_write_text(done, json.dumps({"stage": name, "seconds": round(time.perf_counter() - t0, 2),
                                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "record": record},
                                       indent=2) + "\n")
    return record


def deploy_halves(cfg: Config, folder: Path):
    """The images :func:`coevo.deploy.targets.export_for_target` calibrates and checks INT8 on, for a
    generator of paired data: the input halves of up to ``export.calibration_images`` training pairs
    (``calibration/``), and the input and target halves of the test pairs under the same names
    (``test/``, ``test_gt/``), at ``data.crop_size`` as the model reads them (per ``data.direction``)."""
    from ..data.aligned import build_aligned_datasets
    from ..data.images import to_image
    from ..deploy.targets import DeployData

    splits = build_aligned_datasets(cfg.data, cfg.seed)
    train = splits.train.subset(range(len(splits.train)), augment=False)
    spread = sorted({int(i) for i in np.linspace(0, len(train) - 1, min(len(train), cfg.export.calibration_images))})
    sets = {"calibration": (train, spread, ("A",)),
            "test": (splits.test, range(len(splits.test)), ("A", "B"))}
    for name, (ds, indices, halves) in sets.items():
        for i in indices:
            item = ds[i]
            stem = Path(item["path"]).stem + ".png"
            for half, sub in zip(halves, (name, f"{name}_gt")):
                (folder / sub).mkdir(parents=True, exist_ok=True)
                to_image(item[half]).save(folder / sub / stem)
    return DeployData(calibration=folder / "calibration", test=folder / "test", ground_truth=folder / "test_gt")


def _export_pix2pix(cfg: Config, student_file: Path, path: Path) -> Dict:
    """The export stage: :func:`coevo.deploy.targets.export_for_target` on the fine-tuned student ``G``."""
    from ..deploy.targets import ExportOptions, export_for_target, resolve_target
    from ..models.io import load_generator

    target = resolve_target(cfg.export.target, cfg.device)
    options = ExportOptions.from_config(cfg, target)
    data = deploy_halves(cfg, path / "deploy_data") if target == "cpu" and cfg.export.int8 else None
    report = export_for_target(load_generator(student_file), path, NAME, options, data=data)
    return {"target": target, "deployed": report["deploy"]["deployed"], "int8": report["deploy"].get("int8"),
            "formats": {f: r for f, r in report.items() if f != "deploy"}}


def _bench_pix2pix(cfg: Config, paths: Pix2PixPaths, student_file: Path, export_dir: Path, path: Path) -> Dict:
    """The bench stage, as the CycleGAN pipeline's: teacher and student in eager PyTorch, the student's
    deployed artifact on its runtime, interleaved in one process (``bench.json``, ``bench.png``)."""
    from ..deploy.bench import benchmark_models, machine_info, plot_results, save_results
    from ..deploy.targets import deployed_artifact
    from ..evaluation.report import speed_summary
    from ..models.io import load_generator

    b = cfg.bench
    models = {f"teacher {NAME}": load_pix2pix_generator(paths.G, dropout=cfg.pix2pix.dropout),
              f"coevo {NAME}": load_generator(student_file)}
    deployed = deployed_artifact(export_dir, NAME)
    backends = ["eager"]
    if deployed is not None and deployed["backend"] != "eager":
        backends.append(deployed["backend"])
        models[f"coevo {NAME} deployed"] = load_generator(deployed["path"], trust=True)  # this run's own export
    results = benchmark_models(models, size=b.size, batch=b.batch, threads=b.threads or None, device=cfg.device,
                               backends=backends, warmup=b.warmup, repeats=b.repeats, seed=cfg.seed,
                               only={f"coevo {NAME}": ["eager"]})
    save_results(results, path / "bench.json", machine_info(cfg.device, b.threads or None),
                 extra={"deployed_backend": {NAME: backends[-1]}})
    plot_results(results, path / "bench.png")
    rows = json.loads((path / "bench.json").read_text())["results"]
    return speed_summary(rows, NAME, backends[-1])
