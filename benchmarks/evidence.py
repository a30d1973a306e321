"""Evidence that holds: does coevo's search give a better small generator than pruning or a narrow student?

One protocol, per built-in task (``--task snow`` or ``dense``, 64 px, exact ground truth):

1. **A converged teacher** (:func:`converge_teacher`): the CycleGAN recipe at a constant learning
   rate on the training split minus the held-out part (``data.val_fraction``), evaluated every
   ``--eval-every`` steps on the held-out training images (PSNR to their true translation, both
   directions), stopped when it stops improving: the mean PSNR over the last ``--window`` (2,000)
   steps less than ``--tol-db`` (0.1 dB) above the mean over the window before (a fall counts),
   or at ``--cap`` steps (30,000; stated in the record). Curve: ``teacher/convergence.json``
   and ``.png``; resumable; reused by every cell.
2. **Arms**, each at every budget (MAC ratio to the teacher: 0.05 and 0.02 primary, 0.1 secondary)
   and seed, all fine-tuned by the same code and settings (:func:`coevo.train.finetune.finetune_genomes`):

   * ``coevo``: the search as users run it (:func:`coevo.search.run_search`, ``search.macs_ratio`` =
     the budget, the seed as ``seed``);
   * ``l1``: one-line global L1-norm pruning (:func:`global_l1_genome`: filters ranked across the network
     by their layer-normalised L1 norm, one threshold; each group gets its own width);
   * ``random``: a random genome (:func:`coevo.prune.random_genome_for_macs`, seeded);
   * ``uniform``: every group at the same width fraction, its filters chosen by L1 norm (the
     narrow student of OMGD, initialised from the teacher);
   * ``uniform-scratch``: the same widths, weights drawn afresh (``finetune.init=scratch``);
   * ``coevo-scratch``: the searched widths, weights drawn afresh;
   * on request (``--arms``): ``coevo-supernet`` (the search on a weight-sharing supernet, students cut
     from it), ``coevo-supernet-rerank`` (that search re-ranked by the adapted supernet fitness,
     :data:`RERANK`) and ``coevo-floor`` (the search with no group narrower than the uniform student's
     narrowest group, :func:`width_floor`).

   Every genome is then moved to within ``--tol`` (1%) of the budget's MACs, both generators
   (:func:`match_macs`: single-channel moves, added filters by L1 norm, dropped by lowest L1
   norm, the group farthest from its starting width last), and the achieved ratio is stated
   per cell. ``same_as_l1`` says when an arm's pair equals the L1 pair (for scratch arms: the
   same widths); an arm whose pair, initialisation and seed equal a finished cell's reuses its
   numbers (``reused_from``) instead of training the same thing twice.
3. **Recipes**: ``--recipe gan`` (the CycleGAN losses + distillation, the default of ``compress``),
   ``distill`` (distillation alone, no discriminators, cached teacher) or ``both``; every cell
   records which.
4. **Endpoints**, test split, both directions: primary PSNR of the student's output to the
   teacher's output (``psnr_teacher_AB/BA``), secondary PSNR to ground truth (``psnr_gt_AB/BA``).
5. **Statistics** (``summary``): coevo against each other arm per recipe, budget and endpoint
   (mean of both directions per seed), paired by seed, :func:`paired_stats.compare_all`:
   mean difference, 95% interval, paired t and Wilcoxon, Holm over every comparison of the
   endpoint's table, TOST at +-0.15 dB.

Resumable cell by cell: each cell writes ``--work/cells/RECIPE/ARM_bBUDGET_sSEED.json`` last and a
finished cell is skipped; ``--force`` removes only the cells this invocation names (their
records and folders) and their entries in the results file. Results:
``--out/evidence_TASK.json`` holds a flat list ``cells`` (every cell ever finished for this task,
merged), ``summary`` and ``teacher``.

    python benchmarks/evidence.py --task snow --seeds 8 --recipe both          # the full protocol
    python benchmarks/evidence.py --tiny --out /tmp/evidence-tiny               # minutes, proves the plumbing

``--jobs N`` runs N cells at once in spawned processes (each takes a recipe x budget x seed, its arms in
order; a cell's result does not depend on it). ``--device cuda`` runs the teacher, searches and
fine-tuning on a GPU, into ``evidence_TASK_cuda.json`` and its own work folder (CPU and GPU cells never
mix); ``benchmarks/gpu_check.sh`` runs it (``EVIDENCE=1`` or ``EVIDENCE_ONLY=1``) with 8 jobs, time-boxed.

``--tiny`` (a 32 px, ngf 8 teacher, 2 seeds x coevo and uniform x budget 0.1, one recipe) never
writes into ``benchmarks/results``.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from coevo.config import Config, config_to_dict, dump_config, load_config
from coevo.core.files import atomic_write_text
from coevo.models import load_generator
from coevo.models.teacher import TeacherPaths, find_teacher
from coevo.prune import Genome, macs_ratio_of, random_genome_for_macs
from coevo.prune.baselines import filter_importance
from coevo.prune.budget import WidthFitter, genome_from_scores, random_scores, teacher_budget
from coevo.search import MACS_CONVENTION, MACS_SIZE

log = logging.getLogger("evidence")

TASKS = ("snow", "dense")
ARMS = ("coevo", "l1", "random", "uniform", "uniform-scratch", "coevo-scratch", "coevo-supernet", "coevo-floor",
        "l1-long", "uniform-long", "l1-supernet", "coevo-long", "coevo-supernet-rerank")
# coevo-supernet (a supernet per budget first), coevo-floor and the supernet's controls: on request (--arms)
DEFAULT_ARMS = ARMS[:6]
SCRATCH = {"uniform-scratch": "uniform", "coevo-scratch": "coevo"}  # arm -> the arm whose widths it takes
# the supernet arm's controls: the baseline's pair, fine-tuned for as many more steps as the supernet trained
# (long), or cut from the same supernet (l1-supernet)
LONG = {"l1-long": "l1", "uniform-long": "uniform", "coevo-long": "coevo"}
FROM_SUPERNET = {"coevo-supernet": "coevo-supernet", "l1-supernet": "l1",
                 "coevo-supernet-rerank": "coevo-supernet-rerank"}
GENOMES_OF = {**SCRATCH, **LONG, **FROM_SUPERNET}  # arm -> the arm whose pair it trains
# arm -> the folder of WORK its searches live in (one per budget and seed: bBUDGET_sSEED)
SEARCH_FOLDERS = {"coevo": "search", "coevo-scratch": "search", "coevo-floor": "search-floor",
                  "coevo-supernet": "search-supernet", "coevo-supernet-rerank": "search-supernet-rerank"}
# coevo-supernet-rerank: the supernet search's final top RERANK["top"] genomes and the L1 seed re-scored after
# RERANK["steps"] distillation steps from the supernet's weights (search.rerank_top, search.trained_steps): the
# adapted supernet fitness of benchmarks/fitness_correlation.py
RERANK = {"top": 8, "steps": 60}
RECIPES = ("gan", "distill")
BUDGETS = (0.05, 0.02, 0.1)
DIRECTIONS = ("G_A", "G_B")
EVAL = {"G_A": "AB", "G_B": "BA"}
TOLERANCE = 0.01
CONSTANT_LR_INTERVALS = 1_000_000  # the teacher's loop length in intervals: its schedule never decays
ARM_DEFINITIONS = {
    "coevo": "coevo's co-evolutionary search as users run it (search.macs_ratio = the budget)",
    "l1": "global L1: filters ranked network-wide by L1 norm / the group's mean L1 norm, one threshold",
    "random": "random per-group keep densities scaled to the budget, random filters",
    "uniform": "every group at the same width fraction, filters by L1 norm, weights from the teacher",
    "uniform-scratch": "the uniform widths, weights re-initialised",
    "coevo-scratch": "the searched widths, weights re-initialised",
    "coevo-supernet": "coevo's search on a weight-sharing supernet (search.fitness: supernet; one supernet per "
                      "budget, trained once with the config's seed and shared by the seeds), students cut from "
                      "the supernet and fine-tuned",
    "coevo-floor": "coevo's search with search.min_channels = the narrowest group of the uniform network at the "
                   "budget (no group narrower than the uniform student's narrowest), MAC matching keeping it too",
    "l1-long": "the l1 pair fine-tuned for at least supernet.steps more steps (the supernet arm's equal-steps "
               "control: its students start from that many distillation steps of the supernet)",
    "uniform-long": "the uniform pair fine-tuned for at least supernet.steps more steps (as l1-long)",
    "l1-supernet": "the l1 pair cut from the budget's supernet instead of the teacher (the supernet arm without "
                   "its search)",
    "coevo-supernet-rerank": "coevo-supernet's finished search re-ranked: its final top 8 genomes and the L1 seed "
                             "scored after 60 distillation steps from the supernet's weights (search.rerank_top 8, "
                             "search.trained_steps 60), the best by that cut from the supernet and fine-tuned",
    "coevo-long": "the coevo arm's pair fine-tuned as long as l1-long (does the search win when fine-tuning runs "
                  "longer?)",
}
CELL_KEYS = ("arm", "budget", "seed", "recipe", "macs_ratio_A", "macs_ratio_B", "psnr_teacher_AB",
             "psnr_teacher_BA", "psnr_gt_AB", "psnr_gt_BA", "same_as_l1")

# The demo's networks (ngf 32, 6 blocks, 64 px), search and fine-tuning as users run them, except
# any channel count, so that every arm can land within 1% of the budget (multiples of 8 step the
# MACs by more than that at 0.02). Shorter searches for a CPU: --set search.generations=N.
FULL = ["search.channel_multiple=1"]
# Seconds per cell on a CPU: a 32 px teacher of ngf 8 and 2 blocks, 48 training images per domain.
TINY = ["data.synthetic_n_train=48", "data.synthetic_n_test=8", "data.load_size=32", "data.crop_size=32",
        "data.val_fraction=0.25", "model.ngf=8", "model.n_blocks=2", "model.ndf=8", "model.n_layers_d=2",
        "train.log_every=20", "search.population=4", "search.generations=2", "search.eval_images=4",
        "search.eval_size=32", "search.channel_multiple=1", "search.rerank_top=0", "finetune.epochs=1",
        "finetune.epochs_decay=1", "finetune.log_every=20", "finetune.sample_every=0"]


# ----------------------------------------------------------------------------- MAC matching
def match_macs(fitter: WidthFitter, widths: np.ndarray, target: float, tol: float = TOLERANCE,
               max_moves: int = 10_000) -> Tuple[np.ndarray, bool]:
    """Widths (layout order) within ``target * (1 +- tol)`` MACs, reached by single-channel moves.

    Below the window a channel is added where it fits under the window's top, above it one is
    removed where the rest stays above the window's bottom, each time in the group that has moved
    least from its start relative to its width (the shape found by the arm is kept as far as the
    budget allows). When no single move lands, the best add-one-drop-another pair is taken.
    Returns ``(widths, within)``; ``within`` is False when no sequence of moves reached the window.
    """
    start = np.asarray(widths, dtype=np.int64).copy()
    w = start.copy()
    lo_t, hi_t = target * (1 - tol), target * (1 + tol)
    eye = np.eye(len(w), dtype=np.int64)
    base = np.maximum(start, 1).astype(np.float64)
    for _ in range(max_moves):
        m = float(fitter.macs(w))
        if lo_t <= m <= hi_t:
            return w, True
        if m < lo_t:
            cand = w[None, :] + eye
            ok = (cand <= fitter.full).all(axis=1)
            costs = fitter.macs(cand)
            fits = ok & (costs <= hi_t)
            if fits.any():
                growth = (w + 1) / base
                i = int(np.flatnonzero(fits)[np.argmin(growth[fits])])
                w = cand[i]
                continue
        else:
            cand = w[None, :] - eye
            ok = (cand >= fitter.lo).all(axis=1)
            costs = fitter.macs(cand)
            fits = ok & (costs >= lo_t)
            if fits.any():
                shrink = (w - 1) / base
                i = int(np.flatnonzero(fits)[np.argmax(shrink[fits])])
                w = cand[i]
                continue
            if ok.any():  # every removal falls below the window: take the largest step down and add back
                i = int(np.flatnonzero(ok)[np.argmax(costs[ok])])
                w = cand[i]
                continue
        # no single move lands: the best pair (one channel in, another out)
        best, best_gap = None, math.inf
        for i in range(len(w)):
            if w[i] >= fitter.full[i]:
                continue
            cand = w[None, :] + eye[i] - eye
            ok = (cand >= fitter.lo).all(axis=1) & (cand <= fitter.full).all(axis=1)
            ok[i] = False
            costs = fitter.macs(cand)
            for j in np.flatnonzero(ok & (costs >= lo_t) & (costs <= hi_t)):
                gap = abs(float(costs[j]) - target)
                if gap < best_gap:
                    best, best_gap = cand[j], gap
        if best is None:
            return w, False
        w = best
    return w, bool(lo_t <= float(fitter.macs(w)) <= hi_t)


def with_widths(genome: Genome, widths: Mapping[str, int], scores: Mapping[str, np.ndarray]) -> Genome:
    """``genome`` with each group at ``widths[g]``: filters added in order of ``scores`` (highest first),
    dropped lowest first; the filters it already keeps stay."""
    kept = {}
    for name, mask in genome.masks.items():
        have = np.flatnonzero(mask)
        n = int(widths[name])
        if n >= len(have):
            others = [int(i) for i in np.argsort(-scores[name], kind="stable") if not mask[i]]
            kept[name] = sorted([*have.tolist(), *others[:n - len(have)]])
        else:
            order = have[np.argsort(-scores[name][have], kind="stable")]
            kept[name] = sorted(int(i) for i in order[:n])
    return Genome.from_kept(genome.arch, kept, tied=genome.tied, meta=dict(genome.meta))


def matched(genome: Genome, teacher_gen, budget: float, scores: Mapping[str, np.ndarray],
            tol: float = TOLERANCE, min_channels: int = 1) -> Tuple[Genome, Dict]:
    """(genome moved to within ``tol`` of the budget's MACs, no group below ``min_channels``, record of the move)."""
    arch = genome.arch
    fitter = WidthFitter(arch, MACS_SIZE, genome.tied, min_channels, 1, MACS_CONVENTION)
    target = float(teacher_budget(arch, budget, MACS_SIZE, MACS_CONVENTION))
    before = np.array([genome.widths()[n] for n in fitter.names])
    after, within = match_macs(fitter, before, target, tol)
    out = with_widths(genome, dict(zip(fitter.names, (int(v) for v in after))), scores)
    ratio_before = macs_ratio_of(genome, MACS_SIZE, MACS_CONVENTION)
    ratio = macs_ratio_of(out, MACS_SIZE, MACS_CONVENTION)
    return out, {"macs_ratio_before_match": ratio_before, "macs_ratio": ratio, "within_tolerance": within,
                 "channels_moved": int(np.abs(after - before).sum())}


def uniform_genome(teacher_gen, budget: float) -> Genome:
    """Every group at the same fraction of its width (rounded to nearest), the largest that fits the
    budget; filters by L1 norm."""
    arch = teacher_gen.arch
    fitter = WidthFitter(arch, MACS_SIZE, False, 1, 1, MACS_CONVENTION)
    budget_macs = teacher_budget(arch, budget, MACS_SIZE, MACS_CONVENTION)
    ratio, widths = fitter.fit(fitter.full.astype(np.float64), fitter.full, budget_macs, offset=0.5, s_max=1.0)
    return genome_from_scores(arch, fitter.expand(widths), filter_importance(teacher_gen), False,
                              {"method": "uniform", "fraction": ratio, "macs_ratio": budget})


def width_floor(teacher: Mapping, budget: float) -> int:
    """The ``coevo-floor`` arm's ``search.min_channels``: the narrowest group's width in the uniform network at
    ``budget``, as ``search.width_floor: uniform`` computes it (:func:`coevo.search.context.floor_channels`;
    the arm sets the number, so its searches stay the ones it ran before the option existed). On the snow
    task the narrowest group's width tracked the students' held-out fidelity after fine-tuning across every
    arm (Spearman +0.53 to +0.93 at 0.05 and 0.02)."""
    from coevo.search.context import check_budget

    return int(check_budget(teacher["G_A"].arch, budget, 1, "uniform").min_channels)


def global_l1_genome(teacher_gen, budget: float) -> Genome:
    """One-line global L1 pruning: every filter ranked across the whole network by its L1 norm divided
    by the mean L1 norm of its group (the "mean" normaliser of Torch-Pruning's global pruning: raw norms
    are not comparable between layers of different fan-in), one threshold for all, the highest that
    fits the budget's MACs; every group keeps at least one filter. Unlike ``uniform`` it gives each
    group its own width."""
    arch = teacher_gen.arch
    fitter = WidthFitter(arch, MACS_SIZE, False, 1, 1, MACS_CONVENTION)
    budget_macs = teacher_budget(arch, budget, MACS_SIZE, MACS_CONVENTION)
    scores = filter_importance(teacher_gen)
    norm = {g: v / max(float(np.mean(v)), 1e-12) for g, v in scores.items()}

    def widths_at(t: float) -> np.ndarray:
        return np.array([max(1, int((norm[n] > t).sum())) for n in fitter.names], dtype=np.int64)

    values = np.unique(np.concatenate(list(norm.values())))  # candidate thresholds, ascending
    lo, hi = 0, len(values) - 1  # the smallest threshold index whose widths fit
    if fitter.macs(widths_at(float(values[hi]))) > budget_macs:
        raise ValueError(f"global L1: no threshold fits {budget:g} of the MACs")
    while lo < hi:
        mid = (lo + hi) // 2
        if fitter.macs(widths_at(float(values[mid]))) <= budget_macs:
            hi = mid
        else:
            lo = mid + 1
    t = float(values[lo])
    return genome_from_scores(arch, fitter.expand(widths_at(t)), scores, False,
                              {"method": "global-l1", "threshold": t, "macs_ratio": budget})


def genome_key(genomes: Mapping[str, Genome]) -> str:
    h = hashlib.sha256()
    for d in DIRECTIONS:
        h.update(genomes[d].to_bits().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- teacher
def _val_ground_truth(cfg: Config, dataset) -> Dict[str, torch.Tensor]:
    """The true translations of the held-out training images (rendered again from their scene numbers)."""
    from coevo.data import to_tensor
    from coevo.data.synthetic import render_scene
    from PIL import Image

    out = {}
    for side, other, paths in (("A", "B", dataset.A_paths), ("B", "A", dataset.B_paths)):
        images = []
        for p in paths:
            scene = render_scene(cfg.data.synthetic_seed, f"train{side}", int(Path(p).stem), cfg.data.load_size,
                                 cfg.data.synthetic_task)[other]
            img = Image.fromarray(scene)
            if img.size != (cfg.data.crop_size, cfg.data.crop_size):
                img = img.resize((cfg.data.crop_size, cfg.data.crop_size), Image.BICUBIC)
            images.append(to_tensor(img))
        out[other] = torch.stack(images)
    return out


@torch.no_grad()
def _val_psnr(nets, val: Dict[str, torch.Tensor], gt: Dict[str, torch.Tensor]) -> Dict[str, float]:
    from coevo.evaluation.metrics import psnr

    dev = next(nets.G_A.parameters()).device
    nets.G_A.eval(), nets.G_B.eval()
    try:
        ab = float(psnr(nets.G_A(val["A"].to(dev)).cpu(), gt["B"]).mean())
        ba = float(psnr(nets.G_B(val["B"].to(dev)).cpu(), gt["A"]).mean())
    finally:
        nets.G_A.train(), nets.G_B.train()
    return {"psnr_AB": ab, "psnr_BA": ba, "psnr": 0.5 * (ab + ba)}


def converged(curve: Sequence[Mapping], window: int, tol_db: float) -> Optional[Dict]:
    """The stopping rule: the teacher stopped improving, i.e. the mean PSNR of the evaluations in the last
    ``window`` steps is less than ``tol_db`` above the mean over the ``window`` steps before them (a fall
    counts: a GAN at a constant learning rate drifts, and more steps would not bring back what it lost);
    returns that comparison, or None while the curve still rises.

    Means over windows, not two single evaluations: one held-out evaluation of a GAN moves by tenths of
    a dB from one checkpoint to the next, so two points can agree by chance while the curve still rises.
    """
    if not curve:
        return None
    end = curve[-1]["step"]
    if curve[0]["step"] > end - 2 * window:
        return None
    last = [p["psnr"] for p in curve if end - window < p["step"] <= end]
    before = [p["psnr"] for p in curve if end - 2 * window < p["step"] <= end - window]
    if not last or not before:
        return None
    change = float(np.mean(last) - np.mean(before))
    if change >= tol_db:
        return None
    return {"from_step": end - 2 * window, "to_step": end, "change_db": change,
            "mean_before_db": float(np.mean(before)), "mean_last_db": float(np.mean(last))}


def weights_digest(nets) -> str:
    """sha256 (16 hex digits) of the generators' weights, so a retrained teacher can be checked against
    the one the committed cells used."""
    h = hashlib.sha256()
    for name in ("G_A", "G_B"):
        for key, t in sorted(getattr(nets, name).state_dict().items()):
            h.update(key.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def converge_teacher(cfg: Config, folder: Path, window: int = 2000, tol_db: float = 0.1, cap: int = 30000,
                     eval_every: int = 500) -> Dict:
    """Train the teacher until held-out training PSNR stops moving (see the module docstring); resumable.

    ``folder`` gets ``checkpoint.pt``, ``log.jsonl``, ``convergence.json`` (the curve, the rule, why it
    stopped) and ``convergence.png``, and at the end the teacher's files (``G_A.pt`` ...).
    """
    from coevo.core.runs import mark_run_dir, run_entries
    from coevo.data import build_datasets
    from coevo.train.loop import CycleGANTrainer, LoopSettings
    from coevo.train.teacher import build_cyclegan, save_teacher

    record_path = folder / "convergence.json"
    if record_path.is_file() and (folder / "G_A.pt").is_file():
        record = json.loads(record_path.read_text())
        if record.get("status") == "done" and (record.get("converged") or record.get("steps", 0) >= cap):
            return record  # a capped teacher goes on from its checkpoint when given a higher --cap
    folder.mkdir(parents=True, exist_ok=True)
    if not run_entries(folder):
        mark_run_dir(folder, "benchmarks/evidence.py teacher")
    splits = build_datasets(cfg.data, seed=cfg.seed)
    val = {"A": torch.stack([splits.val[i]["A"] for i in range(len(splits.val.A_paths))]),
           "B": torch.stack([splits.val[i]["B"] for i in range(len(splits.val.B_paths))])}
    gt = _val_ground_truth(cfg, splits.val)
    # One "epoch" of the loop = one evaluation interval: eval_every steps, or a pass over the training
    # images when that is shorter. epochs = CONSTANT_LR_INTERVALS (>= any cap, each interval being >= 1
    # step, and independent of the cap so that a run can resume under another cap) keeps the learning
    # rate constant; a smaller count would start the schedule's decay (and past it, a negative factor).
    per_epoch = -(-len(splits.train) // cfg.train.batch_size)
    eval_every = min(eval_every, per_epoch)
    train = copy.deepcopy(cfg.train)
    if cap > CONSTANT_LR_INTERVALS:
        raise SystemExit(f"evidence: --cap {cap} is above {CONSTANT_LR_INTERVALS} steps")
    train.epochs, train.epochs_decay, train.max_steps_per_epoch = CONSTANT_LR_INTERVALS, 0, eval_every
    settings = LoopSettings.from_section(train, "train", cfg.seed, cfg.device, cfg.data.num_workers)
    nets = build_cyclegan(cfg.model, cfg.seed, cfg.train.init_gain)
    trainer = CycleGANTrainer(nets, settings, folder)
    curve: List[Dict] = []
    if (folder / "checkpoint.pt").is_file():
        trainer.resume()
        if record_path.is_file():
            curve = [p for p in json.loads(record_path.read_text())["curve"] if p["step"] <= trainer.global_step]
    rule = {"window_steps": window, "tol_db": tol_db, "cap_steps": cap, "eval_every_steps": eval_every,
            "rule": f"stop when the mean held-out PSNR over the last {window} steps is less than {tol_db} dB above "
                    f"the mean over the {window} steps before (it stopped improving; a fall counts)",
            "metric": "mean over both directions of PSNR (dB) to the true translation of the held-out training "
                      f"images ({len(val['A'])} + {len(val['B'])}, data.val_fraction={cfg.data.val_fraction})",
            "schedule": f"constant learning rate {cfg.train.lr}, batch {cfg.train.batch_size}"}
    if not curve or curve[-1]["step"] < trainer.global_step:  # a stop between checkpoint and curve
        curve.append({"step": trainer.global_step, **_val_psnr(nets, val, gt)})
    stop = converged(curve, window, tol_db)
    t0 = time.perf_counter()
    while stop is None and trainer.global_step < cap:
        epoch = trainer.epoch
        trainer.run_epoch(splits.train, epoch)
        trainer.step_schedulers()
        trainer.epoch = epoch + 1
        curve.append({"step": trainer.global_step, **_val_psnr(nets, val, gt)})
        log.info("teacher step %d: held-out PSNR A->B %.2f, B->A %.2f", trainer.global_step, curve[-1]["psnr_AB"],
                 curve[-1]["psnr_BA"])
        trainer.save_checkpoint()
        atomic_write_text(record_path, json.dumps({"status": "training", "rule": rule, "curve": curve}, indent=1))
        stop = converged(curve, window, tol_db)
    record = {"status": "done", "rule": rule, "converged": stop is not None, "stopped_by": stop or "cap",
              "steps": trainer.global_step, "weights_sha256": weights_digest(nets), "final": curve[-1], "seconds_this_run": round(time.perf_counter() - t0, 1),
              "curve": curve}
    save_teacher(nets, folder)
    dump_config(cfg, folder / "config.yaml")
    plot_curve(record, folder / "convergence.png")
    atomic_write_text(record_path, json.dumps(record, indent=1))
    log.info("teacher %s after %d steps: held-out PSNR %.2f dB", "converged" if stop else "capped",
             trainer.global_step, curve[-1]["psnr"])
    return record


def plot_curve(record: Mapping, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in record["curve"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("psnr_AB", "A->B"), ("psnr_BA", "B->A"), ("psnr", "mean")):
        ax.plot(steps, [p[key] for p in record["curve"]], label=label, lw=2 if key == "psnr" else 1)
    r = record["rule"]
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out training PSNR (dB)")
    ax.set_title(f"teacher: {'converged' if record['converged'] else 'capped'} at {record['steps']} steps "
                 f"(rule: change < {r['tol_db']} dB over {r['window_steps']} steps)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cells(cells: Sequence[Mapping], path: Path) -> Optional[Path]:
    """PSNR to the teacher (mean of both directions) of every cell, one panel per recipe and budget,
    one column per arm; each seed's cells joined by a thin line (the comparisons are paired by seed)."""
    if not cells:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(c["recipe"], float(c["budget"])) for c in cells}, key=lambda k: (k[0], -k[1]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (recipe, budget) in zip(axes[0], panels):
        group = [c for c in cells if c["recipe"] == recipe and float(c["budget"]) == budget]
        arms = [a for a in ARMS if any(c["arm"] == a for c in group)]
        value = {(c["arm"], c["seed"]): 0.5 * (c["psnr_teacher_AB"] + c["psnr_teacher_BA"]) for c in group}
        for seed in sorted({c["seed"] for c in group}):
            xs = [i for i, a in enumerate(arms) if (a, seed) in value]
            ax.plot(xs, [value[(arms[i], seed)] for i in xs], color="0.75", lw=0.7, zorder=1)
        for i, a in enumerate(arms):
            ys = [v for (arm, _), v in value.items() if arm == a]
            ax.scatter([i] * len(ys), ys, s=14, zorder=2)
            ax.hlines(float(np.mean(ys)), i - 0.25, i + 0.25, color="k", lw=2, zorder=3)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels(arms, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{recipe}, {budget:g} of the MACs", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("PSNR to the teacher (dB), test split")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- cells
def cell_name(arm: str, budget: float, seed: int) -> str:
    return f"{arm}_b{budget:g}_s{seed}"


def cell_path(work: Path, recipe: str, arm: str, budget: float, seed: int) -> Path:
    return work / "cells" / recipe / f"{cell_name(arm, budget, seed)}.json"


def _cfg_with(cfg: Config, overrides: Sequence[str]) -> Config:
    from coevo.config import config_from_dict

    return config_from_dict(config_to_dict(cfg), list(overrides))


def search_pair(cfg: Config, teacher: TeacherPaths, work: Path, budget: float, seed: int,
                min_channels: Optional[int] = None) -> Tuple[Dict, Dict]:
    """The coevo search at ``budget`` and ``seed`` (run, resumed or read back; shared by recipes and arms);
    with ``min_channels``, the search of the ``coevo-floor`` arm (its own folder)."""
    from coevo.search import run_search

    floor = [] if min_channels is None else [f"search.min_channels={int(min_channels)}"]
    folder = work / SEARCH_FOLDERS["coevo" if min_channels is None else "coevo-floor"] / f"b{budget:g}_s{seed}"
    if not (folder / "search.json").is_file():
        scfg = _cfg_with(cfg, [f"search.macs_ratio={budget}", f"seed={seed}", *floor])
        resume = (folder / "state.pt").is_file()
        run_search(scfg, folder, teacher=teacher, resume=resume, force=not resume, progress=False)
    best = {d: Genome.load_json(folder / "genomes" / f"best_{d}.json") for d in DIRECTIONS}
    return best, {"search_folder": str(folder), **({} if min_channels is None else {"min_channels": min_channels})}


def budget_supernet(cfg: Config, teacher: TeacherPaths, work: Path, budget: float) -> Path:
    """The budget's supernet, ``work/supernet/bBUDGET``: trained (or resumed) once, shared by every seed."""
    from coevo.train.supernet import train_supernet

    sn = work / "supernet" / f"b{budget:g}"
    if not (sn / "supernet.json").is_file():
        sn_cfg = _cfg_with(cfg, [f"search.macs_ratio={budget}", "search.fitness=supernet"])
        resume = (sn / "config.yaml").is_file()
        train_supernet(sn_cfg, sn, teacher=None if resume else teacher, resume=resume,
                       force=not resume and sn.exists())
    return sn


def supernet_search_pair(cfg: Config, teacher: TeacherPaths, work: Path, budget: float,
                         seed: int, rerank: bool = False) -> Tuple[Dict, Dict]:
    """The coevo search on a supernet at ``budget`` and ``seed``; the budget's supernet is trained (or
    resumed) first in ``work/supernet/bBUDGET`` and shared by every seed. ``rerank``: that search, finished,
    copied to its own folder and resumed there with the re-rank (:data:`RERANK`), which runs no generation
    again (the coevo-supernet-rerank arm)."""
    from coevo.search import run_search

    if rerank:
        _, info = supernet_search_pair(cfg, teacher, work, budget, seed)
        folder = work / SEARCH_FOLDERS["coevo-supernet-rerank"] / f"b{budget:g}_s{seed}"
        done = folder / "search.json"
        if not (done.is_file() and "rerank" in json.loads(done.read_text())):
            if not folder.is_dir():
                part = folder.with_name(folder.name + ".part")
                shutil.rmtree(part, ignore_errors=True)
                shutil.copytree(info["search_folder"], part)
                (part / "search.json").unlink()  # the copy is finished once its re-rank is written
                part.rename(folder)
            scfg = _cfg_with(cfg, [f"search.macs_ratio={budget}", f"seed={seed}", "search.fitness=supernet",
                                   f"search.rerank_top={RERANK['top']}", f"search.trained_steps={RERANK['steps']}"])
            run_search(scfg, folder, teacher=teacher, resume=True, progress=False)
        best = {d: Genome.load_json(folder / "genomes" / f"best_{d}.json") for d in DIRECTIONS}
        return best, {**info, "search_folder": str(folder), "rerank": dict(RERANK)}

    sn = budget_supernet(cfg, teacher, work, budget)
    folder = work / SEARCH_FOLDERS["coevo-supernet"] / f"b{budget:g}_s{seed}"
    if not (folder / "search.json").is_file():
        scfg = _cfg_with(cfg, [f"search.macs_ratio={budget}", f"seed={seed}", "search.fitness=supernet"])
        resume = (folder / "state.pt").is_file()
        run_search(scfg, folder, teacher=teacher, resume=resume, force=not resume, progress=False,
                   supernet=None if resume else sn)
    best = {d: Genome.load_json(folder / "genomes" / f"best_{d}.json") for d in DIRECTIONS}
    return best, {"search_folder": str(folder), "supernet_folder": str(sn)}


def arm_genomes(arm: str, budget: float, seed: int, cfg: Config, paths: TeacherPaths, teacher: Mapping,
                work: Path) -> Tuple[Dict[str, Genome], Dict]:
    """The arm's pair before MAC matching, and what made it."""
    s = cfg.search
    cons = {"min_channels": s.min_channels, "channel_multiple": s.channel_multiple,
            "convention": MACS_CONVENTION, "tied": s.tied}
    base = GENOMES_OF.get(arm, arm)
    if base == "coevo":
        return search_pair(cfg, paths, work, budget, seed)
    if base == "coevo-supernet":
        return supernet_search_pair(cfg, paths, work, budget, seed)
    if base == "coevo-supernet-rerank":
        return supernet_search_pair(cfg, paths, work, budget, seed, rerank=True)
    if base == "coevo-floor":
        return search_pair(cfg, paths, work, budget, seed, min_channels=width_floor(teacher, budget))
    if base == "l1":
        return {d: global_l1_genome(teacher[d], budget) for d in DIRECTIONS}, {}
    if base == "random":
        rng = np.random.default_rng([seed, 7])
        return {d: random_genome_for_macs(teacher[d].arch, budget, MACS_SIZE, rng, **cons) for d in DIRECTIONS}, {}
    if base == "uniform":
        return {d: uniform_genome(teacher[d], budget) for d in DIRECTIONS}, {}
    raise ValueError(f"unknown arm {arm!r}; choose from {ARMS}")


def matched_pair(arm: str, budget: float, seed: int, cfg: Config, paths: TeacherPaths, teacher: Mapping,
                 work: Path, tol: float) -> Tuple[Dict[str, Genome], Dict]:
    genomes, info = arm_genomes(arm, budget, seed, cfg, paths, teacher, work)
    out, moves = {}, {}
    for d in DIRECTIONS:
        # random arms add and drop channels at random, the others by the teacher's L1 norms
        scores = (random_scores(teacher[d].arch, np.random.default_rng([seed, 11, DIRECTIONS.index(d)]))
                  if GENOMES_OF.get(arm, arm) == "random" else filter_importance(teacher[d]))
        out[d], moves[d] = matched(genomes[d], teacher[d], budget, scores, tol, info.get("min_channels", 1))
    return out, {**info, "match": moves}


def evaluate_pair(students: Mapping, teacher: Mapping, data: Path) -> Dict:
    from coevo.evaluation.evaluate import translation_quality

    out = {}
    for d, direction in (("G_A", "AtoB"), ("G_B", "BtoA")):
        q = translation_quality(students[d], data, direction, teacher=teacher[d])
        tag = EVAL[d]
        out.update({f"psnr_teacher_{tag}": q["psnr_to_teacher"], f"l1_teacher_{tag}": q["l1_to_teacher"],
                    f"psnr_gt_{tag}": q["psnr"], f"ssim_gt_{tag}": q["ssim"],
                    f"psnr_teacher_{tag}_per_image": q["psnr_to_teacher_per_image"]})
    return out


def val_fidelity(folder: Path) -> Dict[str, float]:
    """The fine-tuned pair's L1 to the teacher on the held-out TRAINING images (``finetune.json``'s
    selection metric, at the chosen epoch): ``val_l1_teacher_AB/BA``, for deciding things without the test split."""
    f = Path(folder) / "finetune.json"
    val = (json.loads(f.read_text()).get("val") or {}) if f.is_file() else {}
    return {f"val_l1_teacher_{EVAL[d]}": float(val[f"val_l1_{d[-1]}"]) for d in DIRECTIONS if f"val_l1_{d[-1]}" in val}


def cell_costs(record: Mapping, work: Path) -> Dict[str, float]:
    """What the cell's pair cost, in seconds of this machine: its search (``search_seconds``, over
    ``search_generations``), the budget's supernet (``supernet_seconds``, trained once and shared by the seeds,
    so a user running one seed pays all of it) and the fine-tuning (``finetune_seconds``; a reused twin's)."""
    arm, budget, seed = record["arm"], float(record["budget"]), int(record["seed"])
    out: Dict[str, float] = {}
    if arm in SEARCH_FOLDERS:
        f = work / SEARCH_FOLDERS[arm] / f"b{budget:g}_s{seed}" / "search.json"
        if f.is_file():
            summary = json.loads(f.read_text())
            out.update(search_seconds=float(summary["wall_time_s"]), search_generations=int(summary["generations"]))
    if arm in FROM_SUPERNET:
        f = work / "supernet" / f"b{budget:g}" / "supernet.json"
        if f.is_file():
            out["supernet_seconds"] = float(json.loads(f.read_text())["train_seconds"])
    f = work / "runs" / record["recipe"] / (record.get("reused_from") or cell_name(arm, budget, seed)) / "finetune.json"
    seconds = json.loads(f.read_text()).get("train_seconds") if f.is_file() else None
    if seconds is not None:
        out["finetune_seconds"] = float(seconds)
    return out


def stretched_epochs(epochs: int, epochs_decay: int, extra_steps: int, steps_per_epoch: int) -> List[int]:
    """``[epochs, epochs_decay]`` of at least ``extra_steps`` more steps, in the same proportion of constant and
    decaying epochs."""
    total = epochs + epochs_decay + math.ceil(extra_steps / steps_per_epoch)
    constant = max(1, int(total * epochs / max(1, epochs + epochs_decay) + 0.5))
    return [constant, total - constant]


def long_schedule(cfg: Config, data: Path) -> List[int]:
    """The long arms' ``[epochs, epochs_decay]``: the config's fine-tuning stretched by ``supernet.steps``
    steps (those the supernet arm's students were distilled for before their fine-tuning)."""
    from coevo.data import build_datasets

    f = cfg.finetune
    per_epoch = math.ceil(len(build_datasets(_cfg_with(cfg, [f"data.root={data}"]).data, seed=cfg.seed).train)
                          / f.batch_size)
    if f.max_steps_per_epoch:
        per_epoch = min(per_epoch, f.max_steps_per_epoch)
    return stretched_epochs(f.epochs, f.epochs_decay, cfg.supernet.steps, per_epoch)


def run_cell(arm: str, budget: float, seed: int, recipe: str, cfg: Config, paths: TeacherPaths, teacher: Mapping,
             data: Path, work: Path, tol: float) -> Dict:
    """One cell: genomes, MAC matching, fine-tuning (or reuse of an identical finished cell), test scores."""
    from coevo.train.finetune import finetune_genomes

    path = cell_path(work, recipe, arm, budget, seed)
    if path.is_file():
        record = json.loads(path.read_text())
        if "val_l1_teacher_AB" not in record or "finetune_seconds" not in record:  # finished before records had them
            trained = record.get("reused_from") or cell_name(arm, budget, seed)
            extra = {**val_fidelity(work / "runs" / recipe / trained), **cell_costs(record, work)}
            if any(record.get(k) != v for k, v in extra.items()):
                record.update(extra)
                atomic_write_text(path, json.dumps(record, indent=1) + "\n")
        return record
    t0 = time.perf_counter()
    genomes, info = matched_pair(arm, budget, seed, cfg, paths, teacher, work, tol)
    l1, _ = matched_pair("l1", budget, seed, cfg, paths, teacher, work, tol)
    scratch = arm in SCRATCH
    same_as_l1 = all((genomes[d].widths() == l1[d].widths()) if scratch else (genomes[d] == l1[d])
                     for d in DIRECTIONS)
    init = "scratch" if scratch else "supernet" if arm in FROM_SUPERNET else "teacher"
    key = genome_key(genomes)
    schedule = long_schedule(cfg, data) if arm in LONG else None
    record = {"arm": arm, "budget": budget, "seed": seed, "recipe": recipe, "init": init, "device": cfg.device,
              "macs_ratio_A": info["match"]["G_A"]["macs_ratio"], "macs_ratio_B": info["match"]["G_B"]["macs_ratio"],
              "macs_within_tolerance": all(m["within_tolerance"] for m in info["match"].values()),
              "tolerance": tol, "same_as_l1": bool(same_as_l1), "genome_key": key,
              "widths": {d: genomes[d].widths() for d in DIRECTIONS}, **info}
    if schedule is not None:
        record["finetune_epochs"] = schedule
    if arm == "l1-supernet":
        record["supernet_folder"] = str(budget_supernet(cfg, paths, work, budget))
    twin = _finished_twin(work, recipe, seed, key, init, schedule, exclude=path)
    if twin is not None:
        record.update({k: twin[k] for k in twin if k.startswith(("psnr_", "l1_teacher", "ssim_", "val_"))},
                      reused_from=cell_name(twin["arm"], twin["budget"], twin["seed"]))
    else:
        folder = work / "runs" / recipe / cell_name(arm, budget, seed)
        ft_cfg = _cfg_with(cfg, [f"seed={seed}", f"finetune.mode={recipe}",
                                 f"finetune.init={'teacher' if init == 'supernet' else init}"]
                           + ([f"finetune.epochs={schedule[0]}", f"finetune.epochs_decay={schedule[1]}"]
                              if schedule is not None else []))
        resume = (folder / "config.yaml").is_file()
        finetune_genomes(ft_cfg, paths, genomes, folder, resume=resume, force=not resume and folder.exists(),
                         source={"benchmark": "evidence", "arm": arm, "budget": budget,
                                 **({"search_dir": info["search_folder"]} if arm in SEARCH_FOLDERS and arm in FROM_SUPERNET
                                    else {}),
                                 **({"supernet_dir": record["supernet_folder"]} if arm == "l1-supernet" else {})})
        students = {d: load_generator(folder / f"{d}.pt").eval() for d in DIRECTIONS}
        record.update(evaluate_pair(students, teacher, data))
        record.update(val_fidelity(folder))
        record["finetune_folder"] = str(folder)
    record.update(cell_costs(record, work))
    record["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")  # last: the cell is finished
    return record


def measure_speed(cells: Sequence[Mapping], teacher: Mapping, work: Path, repeats: int = 15) -> Dict:
    """Seed 0's fine-tuned pair of every recipe, arm and budget timed against the teacher: eager CPU, one
    thread, 256 px, batch 1, all models interleaved round-robin in one run (a slow spell of a shared
    machine hits them alike, so the speed-ups hold even where absolute times drift). Medians."""
    from _common import time_against_teacher

    timed = [c for c in cells if c["seed"] == 0 and c.get("finetune_folder")]
    # the fine-tune folder under this --work (a record's own path may be relative to where it ran)
    folders = {f"{c['recipe']} {cell_name(c['arm'], c['budget'], c['seed'])}":
               work / "runs" / c["recipe"] / cell_name(c["arm"], c["budget"], c["seed"]) for c in timed}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other work on the machine, said with it
    teacher_ms, pairs = time_against_teacher(teacher, folders, MACS_SIZE, repeats, DIRECTIONS)
    return {"settings": f"eager CPU, 1 thread, {MACS_SIZE} px, batch 1, interleaved round-robin; median of "
                        f"{repeats} rounds after 3 warm-up rounds"
                        + (f"; 1-minute load average {load:.1f} on {os.cpu_count()} cores when it started"
                           if load is not None else ""),
            "cells": pairs, "teacher_ms": teacher_ms, "load_average": load}


def _finished_twin(work: Path, recipe: str, seed: int, key: str, init: str, schedule: Optional[List[int]],
                   exclude: Path) -> Optional[Dict]:
    folder = work / "cells" / recipe
    if not folder.is_dir():
        return None
    for p in sorted(folder.glob("*.json")):
        if p == exclude:
            continue
        r = json.loads(p.read_text())
        if (r.get("seed") == seed and r.get("genome_key") == key and r.get("init") == init
                and r.get("finetune_epochs") == schedule and "reused_from" not in r):
            return r
    return None


def remove_cells(work: Path, cells: Sequence[Tuple[str, str, float, int]]) -> int:
    """``--force``: delete these cells' records and fine-tune folders, nothing else; returns how many."""
    from coevo.core.files import remove_owned

    n = 0
    for recipe, arm, budget, seed in cells:
        for p in (cell_path(work, recipe, arm, budget, seed), work / "runs" / recipe / cell_name(arm, budget, seed)):
            if p.exists():
                remove_owned(p, work)
                n += 1
    return n


def merge_cells(old: Sequence[Mapping], new: Sequence[Mapping], replaced: Sequence[Tuple[str, str, float, int]]
                ) -> List[Dict]:
    """The results file's cells: the old ones minus those ``replaced`` or ``new`` again, then the new ones."""
    def ident(c):
        return (c["recipe"], c["arm"], float(c["budget"]), int(c["seed"]))

    drop = {(r, a, float(b), int(s)) for r, a, b, s in replaced} | {ident(c) for c in new}
    kept = [dict(c) for c in old if ident(c) not in drop]
    return sorted(kept + [dict(c) for c in new], key=lambda c: (c["recipe"], float(c["budget"]), c["arm"], c["seed"]))


# ----------------------------------------------------------------------------- statistics
def summarise(cells: Sequence[Mapping], margin: float = 0.15) -> Dict:
    """coevo against every other default arm (coevo-floor against the baselines and coevo; coevo-supernet also
    against its controls), paired by seed, per
    recipe, budget and endpoint (Holm over each endpoint's table)."""
    from paired_stats import compare_all

    out: Dict = {}
    for endpoint in ("psnr_teacher", "psnr_gt"):
        pairs, meta = {}, {}
        for recipe in sorted({c["recipe"] for c in cells}):
            for budget in sorted({float(c["budget"]) for c in cells}):
                group = [c for c in cells if c["recipe"] == recipe and float(c["budget"]) == budget]
                value = {(c["arm"], c["seed"]): 0.5 * (c[f"{endpoint}_AB"] + c[f"{endpoint}_BA"]) for c in group
                         if c.get(f"{endpoint}_AB") is not None and c.get(f"{endpoint}_BA") is not None}
                # coevo against the other default arms; coevo-supernet (when run) against the baselines, the proxy
                # search and its controls
                for base, others in (("coevo", [a for a in DEFAULT_ARMS if a != "coevo"]),
                                     ("coevo-supernet", ["l1", "random", "uniform", "coevo", "l1-long",
                                                         "uniform-long", "l1-supernet"]),
                                     ("coevo-long", ["l1-long", "uniform-long"]),
                                     ("coevo-supernet-rerank", ["l1", "random", "uniform", "coevo", "coevo-supernet",
                                                                "l1-supernet", "l1-long", "uniform-long"]),
                                     ("coevo-floor", ["l1", "random", "uniform", "coevo"])):
                    for arm in others:
                        seeds = sorted(s for (a, s) in value if a == arm and (base, s) in value)
                        if len(seeds) < 2:
                            continue
                        name = f"{recipe} b{budget:g}: {base} - {arm}"
                        pairs[name] = ([value[(base, s)] for s in seeds], [value[(arm, s)] for s in seeds])
                        meta[name] = {"recipe": recipe, "budget": budget, "base": base, "arm": arm, "seeds": seeds}
        stats = compare_all(pairs, margin=margin) if pairs else {}
        out[endpoint] = {name: {**meta[name], **s} for name, s in stats.items()}
    out["endpoints"] = {"psnr_teacher": "primary: mean over both directions of PSNR (dB) of the student's output "
                                        "to the teacher's output, test split",
                        "psnr_gt": "secondary: mean over both directions of PSNR (dB) to the ground truth"}
    out["rule"] = (f"paired by seed; paired t and Wilcoxon; Holm over the comparisons of each endpoint's table; "
                   f"TOST at +-{margin} dB; verdict better/worse (Holm p < 0.05), equivalent (TOST Holm p < 0.05), "
                   "else undecided")
    return out


# ----------------------------------------------------------------------------- concurrent cells
def cell_groups(cells: Sequence[Tuple[str, str, float, int]]) -> List[List[Tuple[str, str, float, int]]]:
    """Cells grouped by (recipe, budget, seed), arms in the given order: a group's arms share a search
    (coevo, coevo-scratch) and reuse each other's twins, so one process runs a group start to end."""
    groups: Dict[Tuple[str, float, int], List] = {}
    for cell in cells:
        recipe, _, budget, seed = cell
        groups.setdefault((recipe, float(budget), int(seed)), []).append(cell)
    return list(groups.values())


def _group_worker(group, cfg_dict: Dict, paths: TeacherPaths, data: Path, work: Path, tol: float,
                  threads: Optional[int]) -> List[Tuple[Dict, float]]:
    """One process's share (:func:`run_parallel`): the group's cells in order, each written on finishing."""
    from coevo.config import config_from_dict

    from _common import process_setup

    process_setup(threads)
    cfg = config_from_dict(cfg_dict)
    teacher = {d: load_generator(getattr(paths, d)).eval() for d in DIRECTIONS}
    out = []
    for recipe, arm, budget, seed in group:
        t0 = time.perf_counter()
        out.append((run_cell(arm, budget, seed, recipe, cfg, paths, teacher, data, work, tol), time.perf_counter() - t0))
    return out


def run_parallel(cells, jobs: int, cfg: Config, paths: TeacherPaths, data: Path, work: Path, tol: float,
                 threads: Optional[int]):
    """Yields ``(record, seconds)`` of every cell as its group finishes, ``jobs`` groups at a time in spawned
    processes (CUDA-safe). The supernets the cells need are trained here first, one per budget, so that no
    two processes train the same one; every cell's result is the one a single process gives (seeded)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    for budget in sorted({float(b) for _, a, b, _ in cells if a in FROM_SUPERNET}):
        budget_supernet(cfg, paths, work, budget)
    groups = cell_groups(cells)
    with ProcessPoolExecutor(max_workers=min(jobs, len(groups)) or 1,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_group_worker, g, config_to_dict(cfg), paths, data, work, tol, threads)
                   for g in groups]
        for future in as_completed(futures):
            yield from future.result()


# ----------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="snow", choices=TASKS)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--arms", help=f"subset of {','.join(ARMS)} (default all; coevo,uniform with --tiny)")
    p.add_argument("--budgets", help="MAC ratios (default 0.05,0.02,0.1; 0.1 with --tiny)")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 8; 2 with --tiny)")
    p.add_argument("--recipe", default="gan", choices=[*RECIPES, "both"])
    p.add_argument("--tol", type=float, default=TOLERANCE, help="MAC tolerance, relative (default 0.01)")
    p.add_argument("--window", type=int, default=2000, help="teacher: steps over which PSNR must settle")
    p.add_argument("--tol-db", type=float, default=0.1, help="teacher: settled when it moved less than this")
    p.add_argument("--cap", type=int, default=30000, help="teacher: most training steps (default 30000)")
    p.add_argument("--eval-every", type=int, default=500, help="teacher: steps between held-out evaluations")
    p.add_argument("--work", help="default benchmarks/work/evidence-TASK (evidence-tiny-TASK with --tiny)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results; required with --tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=None, help="torch threads (per job with --jobs)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where teacher, searches and fine-tuning run (cuda: results in evidence_TASK_cuda.json, "
                        "work in benchmarks/work/evidence-TASK-cuda; the CPU and GPU cells never mix)")
    p.add_argument("--jobs", type=int, default=1,
                   help="cells run at once in this many processes (each takes one recipe x budget x seed at a "
                        "time, its arms in order; the budgets' supernets are trained first)")
    p.add_argument("--force", action="store_true", help="redo the cells this invocation names (only those)")
    p.add_argument("--speed", action="store_true",
                   help="after the cells, time seed 0's pair of every arm and budget against the teacher, interleaved")
    p.add_argument("--teacher-only", action="store_true", help="train (or resume) the converged teacher, no cells")
    p.add_argument("--refresh", action="store_true",
                   help="only read back the named cells that are finished (adding what newer records carry) and "
                        "rewrite the results; nothing is trained")
    p.add_argument("--tiny", action="store_true", help="2 seeds x coevo, uniform x budget 0.1 on a tiny teacher")
    args = p.parse_args(argv)
    if args.tiny:
        if args.out is None or Path(args.out).resolve() == Path("benchmarks/results").resolve():
            p.error("--tiny needs --out outside benchmarks/results (tiny numbers are not results)")
        args.window, args.tol_db, args.cap, args.eval_every = 60, 0.1, 150, 30
    tiny = {"arms": "coevo,uniform", "budgets": "0.1", "seeds": 2}
    full = {"arms": ",".join(DEFAULT_ARMS), "budgets": ",".join(f"{b:g}" for b in BUDGETS), "seeds": 8}
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = Path(args.out or "benchmarks/results")
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown:
        p.error(f"unknown arm(s) {unknown}; choose from {','.join(ARMS)}")
    args.budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    args.recipes = list(RECIPES) if args.recipe == "both" else [args.recipe]
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.refresh and (args.force or args.teacher_only):
        p.error("--refresh reads finished cells back; it does not go with --force or --teacher-only")
    args.tag = args.task if args.device == "cpu" else f"{args.task}_{args.device}"
    args.work = Path(args.work or f"benchmarks/work/evidence-{'tiny-' if args.tiny else ''}{args.tag.replace('_', '-')}")
    return args


def read_config(args) -> Config:
    return load_config(args.config, [*(TINY if args.tiny else FULL), f"data.synthetic_task={args.task}",
                                     f"device={args.device}", *args.overrides])


def prepare(args) -> Tuple[Config, Path, Dict]:
    """(config, data folder, teacher record): the work folder, the task's data and its converged teacher."""
    from coevo.core.runs import mark_run_dir, run_entries
    from coevo.data.synthetic import make_synthetic_dataset

    args.work.mkdir(parents=True, exist_ok=True)
    if not run_entries(args.work):
        mark_run_dir(args.work, "benchmarks/evidence.py")
    data = (args.work / "data").resolve()
    cfg = read_config(args)
    cfg = _cfg_with(cfg, [f"data.root={data}", "data.synthetic=false"])
    if not (data / "meta.json").is_file():
        make_synthetic_dataset(data, size=cfg.data.load_size, n_train=cfg.data.synthetic_n_train,
                               n_test=cfg.data.synthetic_n_test, seed=cfg.data.synthetic_seed, task=args.task)
    saved = args.work / "config.yaml"
    if saved.is_file():
        from coevo.config import diff_configs

        diffs = diff_configs(load_config(saved), cfg, ("data", "model", "train", "search", "finetune"))
        if diffs:
            raise SystemExit(f"evidence: {args.work} holds cells made with other settings ({', '.join(diffs)}); "
                             "use another --work")
    dump_config(cfg, saved)
    if getattr(args, "refresh", False):
        done = args.work / "teacher" / "convergence.json"
        if not done.is_file() or json.loads(done.read_text()).get("status") != "done":
            raise SystemExit(f"evidence --refresh: {args.work} has no finished teacher; run without --refresh")
    record = converge_teacher(cfg, args.work / "teacher", args.window, args.tol_db, args.cap, args.eval_every)
    return cfg, data, record


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from _common import process_setup

    process_setup(args.threads)
    start = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("evidence: --device cuda, but torch sees no CUDA device; run on a GPU machine or drop --device")
    cfg, data, teacher_record = prepare(args)
    paths = find_teacher(args.work / "teacher")
    teacher = {d: load_generator(getattr(paths, d)).eval() for d in DIRECTIONS}
    cells = [(r, a, b, s) for r in args.recipes for b in args.budgets for s in range(args.seeds) for a in args.arms]
    if args.teacher_only:
        cells = []
    if args.refresh:
        cells = [c for c in cells if cell_path(args.work, c[0], c[1], c[2], c[3]).is_file()]
    if args.force:
        log.info("--force: removed %d entries of the %d named cells", remove_cells(args.work, cells), len(cells))
    out_path = args.out / f"evidence_{args.tag}.json"
    new: List[Dict] = []

    def write_results() -> Dict:
        """The results file as of now (after the teacher and after every cell, so a stop loses no cell)."""
        previous = json.loads(out_path.read_text()) if out_path.is_file() else {}
        all_cells = merge_cells(previous.get("cells", []), new, cells if args.force else [])
        teacher_curve = args.out / f"evidence_{args.tag}_teacher.png"
        result = {
            "benchmark": "evidence", "version": 2, "task": args.task, "device": args.device, "tiny": args.tiny,
            "command": " ".join(["python benchmarks/evidence.py", *(sys.argv[1:] if argv is None else argv)]),
            "settings": {"config": config_to_dict(cfg), "macs_size": MACS_SIZE, "macs_convention": MACS_CONVENTION,
                         "tolerance": args.tol, "work": str(args.work), "arm_definitions": ARM_DEFINITIONS},
            "teacher": {k: v for k, v in teacher_record.items() if k != "curve"}
            | {"curve_file": teacher_curve.name, "curve_points": len(teacher_record["curve"])},
            "summary": summarise(all_cells),
            "cell_keys": list(CELL_KEYS),
            "cells": all_cells,
        }
        if "speed" in previous:  # kept until a --speed run measures it again
            result["speed"] = previous["speed"]
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_path, json.dumps(result, indent=1) + "\n")
        atomic_write_text(args.out / f"evidence_{args.tag}_teacher.json", json.dumps(teacher_record, indent=1) + "\n")
        plot_curve(teacher_record, teacher_curve)
        plot_cells(all_cells, args.out / f"evidence_{args.tag}.png")
        return result

    if out_path.is_file():
        other = {c.get("device", "cpu") for c in json.loads(out_path.read_text()).get("cells", [])} - {args.device}
        if other:
            raise SystemExit(f"evidence: {out_path} holds cells run on {', '.join(sorted(other))}, not "
                             f"{args.device}; use another --out")
    result = write_results()

    def finished(i: int, record: Dict, seconds: float) -> None:
        nonlocal result
        new.append(record)
        result = write_results()
        log.info("cell %d/%d %s %s: MACs %.4f/%.4f of the teacher (target %g), PSNR to teacher %.2f/%.2f dB, "
                 "to GT %.2f/%.2f dB%s (%.0f s)", i, len(cells), record["recipe"],
                 cell_name(record["arm"], record["budget"], record["seed"]), record["macs_ratio_A"],
                 record["macs_ratio_B"], record["budget"], record["psnr_teacher_AB"], record["psnr_teacher_BA"],
                 record["psnr_gt_AB"], record["psnr_gt_BA"], ", same as L1" if record["same_as_l1"] else "", seconds)

    if args.jobs == 1:
        for i, (recipe, arm, budget, seed) in enumerate(cells, 1):
            t0 = time.perf_counter()
            finished(i, run_cell(arm, budget, seed, recipe, cfg, paths, teacher, data, args.work, args.tol),
                     time.perf_counter() - t0)
    else:
        for record, seconds in run_parallel(cells, args.jobs, cfg, paths, data, args.work, args.tol, args.threads):
            finished(len(new) + 1, record, seconds)
    if args.speed:
        speed = measure_speed(result["cells"], teacher, args.work)
        result["speed"] = speed
        atomic_write_text(out_path, json.dumps(result, indent=1) + "\n")
        for name, v in speed["cells"].items():
            print(f"  speed {name}: " + ", ".join(f"{d} {v[d]['speedup']:.2f}x" for d in DIRECTIONS if d in v))
    print(f"{args.task}: {len(new)} cells this run, {len(result['cells'])} in {out_path}")
    for endpoint in ("psnr_teacher", "psnr_gt"):
        for name, s in result["summary"][endpoint].items():
            print(f"  {endpoint} {name}: {s['mean']:+.3f} dB [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}], "
                  f"Holm p {s['p_t_holm']:.3g}, TOST Holm p {s['p_tost_holm']:.3g} -> {s['verdict']} (n={s['n']})")
    off = [c for c in new if not c["macs_within_tolerance"]]
    if off:
        print(f"  {len(off)} cells missed the {args.tol:.0%} MAC tolerance: "
              + ", ".join(cell_name(c["arm"], c["budget"], c["seed"]) for c in off))
    print(f"wall time {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
