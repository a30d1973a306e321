"""A search run folder: inputs, per-generation checkpoints, and the results the fine-tune stage reads.

``RUN_DIR`` after :func:`run_search`::

    config.yaml            resolved coevo config (all sections)
    teacher.json           absolute paths of G_A, G_B (and D_A, D_B when the teacher has them)
    genomes/best_G_A.json  best genome per generator (coevo.genome JSON), rewritten every generation
    genomes/best_G_B.json
    history.jsonl          one line per generation: best and mean terms of both populations
    state.pt               checkpoint written atomically after every generation (resume point)
    plots/fitness.png      fitness and terms per generation
    plots/channels.png     kept channels per group of both best genomes vs the teacher
    search.json            summary: metric, best terms, MACs, params, budget, seed, time, evaluations
    weights.json           search.fitness=supernet: the supernet folder candidates take their weights from

Resuming (``resume=True``) continues from ``state.pt`` with the folder's own
config and teacher; it gives the same genomes and history as a run that was
never interrupted (history lines after the checkpoint are dropped and redone).

Under torchrun (:mod:`coevo.core.distributed`) every rank runs :func:`run_search` with
the same arguments: each generation's evaluations are split across the ranks
and gathered, every rank runs the same seeded GA step (a digest of the state is
compared after every generation), and rank 0 alone writes the folder. Genomes,
history and state equal a one-process run's with the same seed and thread count.

:func:`read_search_run` reads a folder back (history, best genomes, summary).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..core import distributed
from ..config import Config, diff_configs, dump_config, load_config
from ..data.prepare import run_data
from ..core.files import atomic_write_text
from ..models.teacher import TeacherPaths, resolve_teacher
from ..prune import Genome
from ..core.inputs import (InputsChangedError, check_config_file, check_same_inputs, inputs_record,
                      teacher_files, write_inputs)
from ..core.runlock import check_not_running, lock_run_dir, releasing
from ..core.outputs import check_outputs_apart, data_input, teacher_input
from ..core.runs import append_jsonl, prepare_run_dir, read_jsonl, truncate_jsonl, undo_failed_start
from ..train.curves import Curves
from .context import eval_size_for, teacher_image_size  # noqa: F401 (re-exported)
from .context import DIRECTIONS, MACS_CONVENTION, build_context
from .evolve import CoevolutionSearch, check_search_config
from .supernet import recorded_supernet, supernet_files, write_weights_record
from .state import SearchState, load_state, save_state
from ..errors import ConfigError

log = logging.getLogger(__name__)

# Config parts a search result depends on: a resume that changes them is refused, except
# for the generation count (a finished search may be continued for more generations).
SEARCH_SECTIONS = ("seed", "data", "search")
RESUME_MAY_CHANGE = ("search.generations",)
# The re-rank runs after the last generation and is not checkpointed, so a resumed search re-ranks with
# the settings it is resumed with: `--resume --set search.rerank_top=4` re-ranks a finished search without
# running it again. trained_steps and trained_lr are also the generations' fitness with
# search.fitness=trained, and may change only when the run's fitness is another.
RERANK_KEYS = ("search.rerank_top", "search.trained_steps", "search.trained_lr")


def resume_may_change(fitness: str) -> Tuple[str, ...]:
    """The config keys a resume of a search with ``search.fitness`` = ``fitness`` may change."""
    return RESUME_MAY_CHANGE + (RERANK_KEYS[:1] if fitness == "trained" else RERANK_KEYS)


@dataclass
class SearchResult:
    """A finished (or resumable) search: its folder, best genome per direction, ``search.json``
    summary and ``history.jsonl`` records (one per generation, 0 = the initial populations)."""

    run_dir: Path
    best: Dict[str, Genome]
    summary: Dict
    history: List[Dict] = field(default_factory=list)

    @property
    def generations(self) -> List[int]:
        return [int(r["generation"]) for r in self.history]

    def series(self, direction: str, term: str, stat: str = "best") -> List[float]:
        """One value per generation: ``stat`` ("best" member or population "mean") of a fitness
        ``term`` (fitness, perceptual, cycle, quality, macs, params; "dropped" for best only).

        ``cycle`` of ``G_A`` is L1(G_B*(G_A(x)), x) with G_B* the other population's best when
        that generation was scored (the teacher's G_B in generation 0).
        """
        if stat not in ("best", "mean"):
            raise ValueError(f"stat must be 'best' or 'mean', got {stat!r}")
        try:
            return [float(r[direction][stat][term]) for r in self.history]
        except KeyError:
            known = sorted(self.history[0][direction][stat]) if self.history and direction in self.history[0] else []
            raise KeyError(f"no {stat} {term!r} for {direction!r} in {self.run_dir / 'history.jsonl'}; "
                           f"directions {list(DIRECTIONS)}, terms {known}") from None

    def best_widths(self, direction: str) -> List[Dict[str, int]]:
        """Kept channels per group of the population's best, one dict per generation."""
        return [dict(r[direction]["best_widths"]) for r in self.history]


def read_search_run(run_dir: str | Path) -> SearchResult:
    """Read a search run folder back (see the module docstring for its layout).

    Works on a finished run and on one still going or interrupted (then ``summary`` is
    empty and ``best`` holds the best genomes of the last finished generation).
    """
    run_dir = Path(run_dir)
    best = {}
    for d in DIRECTIONS:
        path = run_dir / "genomes" / f"best_{d}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {run_dir} is not a search run with a finished "
                                    "generation (give the --out folder of `coevo search`, or the search/ "
                                    "folder of a `coevo compress` run)")
        best[d] = Genome.load_json(path)
    summary_path = run_dir / "search.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return SearchResult(run_dir, best, summary, read_jsonl(run_dir / "history.jsonl"))


def teacher_paths_for(run_dir: Path, teacher: Optional[str | Path | TeacherPaths]) -> TeacherPaths:
    if isinstance(teacher, TeacherPaths):
        return teacher
    if teacher is not None:
        return resolve_teacher(teacher)
    saved = run_dir / "teacher.json"
    if not saved.exists():
        raise FileNotFoundError(f"{saved} is missing; pass --teacher (or --teacher-ab and --teacher-ba)")
    return TeacherPaths.from_dict(json.loads(saved.read_text()))


def _log_cost(ctx, cfg: Config) -> None:
    from ..prune import count_macs

    n = int(ctx["G_A"].inputs.shape[0]) + int(ctx["G_B"].inputs.shape[0])
    size = int(cfg.search.eval_size)
    teacher = count_macs(ctx["G_A"].teacher.arch, size, size)
    # a candidate costs its own forward and its partner's (cycle), each at most the teacher's size
    per_gen = 2 * n * teacher * cfg.search.population
    log.info("search evaluates %d images per domain at %dx%d: at most %.1f GMACs per generation "
             "(%d candidates per population), %d generations", n // 2, size, size, per_gen / 1e9,
             cfg.search.population, cfg.search.generations)


@releasing
def run_search(cfg: Config, out: str | Path, teacher: Optional[str | Path | TeacherPaths] = None,
               resume: bool = False, force: bool = False, progress: bool = True,
               stop_after: Optional[int] = None, supernet: Optional[str | Path] = None) -> SearchResult:
    """Run (or resume) a co-evolutionary search into ``out``; see the module docstring.

    ``teacher``: a coevo training run, a folder of reference checkpoints, or
    :class:`~coevo.models.teacher.TeacherPaths` (e.g. from
    :func:`~coevo.models.teacher.resolve_teacher` for two generator files; on
    resume, default: the run's teacher.json). ``stop_after``: stop once this many
    generations are done in total (the run stays resumable), e.g. to split a long search.
    ``supernet``: the ``coevo supernet`` folder whose weights candidates are cut from with
    ``search.fitness=supernet`` (on resume, default: the run's weights.json).
    """
    cfg = copy.deepcopy(cfg)  # data.root and eval_size are resolved below; the caller's stays as it was
    check_search_config(cfg.search)
    built = {}  # rank 0's context, built (and checked) before anything else runs

    if supernet is not None and cfg.search.fitness != "supernet":
        raise ConfigError(f"a supernet is given but search.fitness is {cfg.search.fitness}; set "
                          "search.fitness=supernet to score candidates with it, or drop --supernet")

    def start():
        with undo_failed_start(out, resume):
            check_outputs_apart(out, {"data folder": data_input(cfg.data.root, out),
                                      "teacher": teacher_input(teacher), "supernet": supernet})
            check_not_running(out)  # before --force may delete it
            run_dir = prepare_run_dir(out, resume=resume, force=force, command="search")
            lock_run_dir(run_dir)
            if resume:
                check_config_file(run_dir)
            paths = teacher_paths_for(run_dir, teacher)
            weights_from = _supernet_for(run_dir, cfg, supernet, resume)
            files = {**teacher_files(paths), **(supernet_files(weights_from) if weights_from is not None else {})}
            if resume:
                check_same_inputs(run_dir, files)
            saved = run_dir / "config.yaml"
            run_data(cfg.data, run_dir, resume, load_config(saved).data.root if resume and saved.is_file() else None)
            cfg.search.eval_size = eval_size_for(cfg, paths)
            if resume and saved.is_file():
                _check_same_settings(run_dir, load_config(saved), cfg)
            # budget and metric errors come before any evaluation
            built["ctx"] = build_context(cfg, paths, weights_from)
            _log_cost(built["ctx"], cfg)
            point = _restore_point(run_dir, cfg, resume)  # before config.yaml is rewritten: it may refuse
            write_inputs(run_dir, inputs_record(cfg, files))
            atomic_write_text(run_dir / "teacher.json", json.dumps(paths.to_dict(), indent=2) + "\n")
            if weights_from is not None:
                write_weights_record(run_dir, weights_from)
            dump_config(cfg, run_dir / "config.yaml")  # last: a folder with it holds a run to resume
        return run_dir, paths, cfg, weights_from, *point

    # Under torchrun rank 0 prepares the folder and reads the resume point; every rank gets them.
    run_dir, paths, cfg, weights_from, state, records = distributed.on_main(start)
    ctx = built["ctx"] if "ctx" in built else build_context(cfg, paths, weights_from)
    search = CoevolutionSearch(ctx, cfg.search, cfg.seed)
    if state is not None:
        search.restore(state, records)
        log.info("resumed %s after generation %d", run_dir, state.generation)

    curves = Curves(run_dir, "search", cfg.log, enabled=distributed.is_main())

    def checkpoint(s: CoevolutionSearch, record: Dict) -> None:
        distributed.check_same(_digest(s), f"the search state after generation {s.generation}")
        if distributed.is_main():
            append_jsonl(run_dir / "history.jsonl", record)
            curves.scalars(s.generation, record)
            _write_best(s, run_dir, cfg)
            save_state(s.state(), run_dir / "state.pt")

    target = cfg.search.generations if stop_after is None else min(cfg.search.generations, int(stop_after))
    t0, first = time.perf_counter(), search.generation
    try:
        best = search.run(target, callback=checkpoint, progress=progress and distributed.is_main())
    finally:
        curves.close()
    if search.generation > first:
        log.info("search: %d generation(s) in %.1fs, now %d of %d", search.generation - max(first, 0),
                 time.perf_counter() - t0, search.generation, cfg.search.generations)
    if cfg.search.rerank_top and search.generation >= cfg.search.generations:
        # Not checkpointed: a resumed finished search reranks again, with the same result.
        t1 = time.perf_counter()
        search.rerank(cfg.search.rerank_top)
        search.elapsed_s += time.perf_counter() - t1
        distributed.on_main(_write_best, search, run_dir, cfg)
        best = {d: search.best(d) for d in DIRECTIONS}
        if distributed.is_main():  # what the proxy fitness alone would have returned
            for d in DIRECTIONS:
                search.populations[d].best().genome.save_json(run_dir / "genomes" / f"proxy_best_{d}.json")
    summary = _search_summary(search, cfg, paths)
    if "latency" in summary:  # a latency budget: say where the chosen pair lands against it
        lat = summary["latency"]
        log.info("latency budget %.2f ms (teacher %.2f ms predicted, %s, %d thread(s), %dpx): predicted %s",
                 lat["budget_ms"], lat["teacher_ms_predicted"], lat["target"], lat["threads"], lat["size"],
                 ", ".join(f"{d} {summary['best'][d]['predicted_ms']:.2f} ms" for d in DIRECTIONS))
    distributed.on_main(_finish, search, run_dir, summary)
    return SearchResult(run_dir, {d: best[d].genome for d in DIRECTIONS}, summary, search.history)


def _supernet_for(run_dir: Path, cfg: Config, supernet: Optional[str | Path], resume: bool) -> Optional[Path]:
    """The supernet folder of a ``search.fitness=supernet`` search: the one given, else (on resume) the
    run's; None for the other fitnesses. A resume may not swap the supernet for another folder."""
    if cfg.search.fitness != "supernet":
        return None
    saved = recorded_supernet(run_dir) if resume else None
    if supernet is None:
        return saved
    given = Path(supernet).resolve()
    if saved is not None and given != saved.resolve():
        raise InputsChangedError(f"cannot resume {run_dir}: it scored candidates with the supernet in {saved}, "
                                 f"not {given}; drop --supernet, or start a new run")
    return given


def _check_same_settings(run_dir: Path, old: Config, cfg: Config) -> None:
    """Refuse a resume whose config changes what the search computes (more generations are fine)."""
    changed = diff_configs(old, cfg, SEARCH_SECTIONS, ignore=resume_may_change(old.search.fitness))
    if changed:
        raise InputsChangedError(
            f"cannot resume {run_dir}: the config differs from the run's in {', '.join(changed)}; the result "
            "would differ from an uninterrupted run. Resume with the run's settings (drop these --set values), "
            "or start a new run (--force or another --out)")


def _restore_point(run_dir: Path, cfg: Config, resume: bool) -> Tuple[Optional[SearchState], List[Dict]]:
    """The saved state and the history lines up to it (``(None, [])`` for a new start)."""
    state_path, history_path = run_dir / "state.pt", run_dir / "history.jsonl"
    if resume and state_path.exists():
        state = load_state(state_path)
        changed = diff_configs({"search": state.search_config}, {"search": asdict(cfg.search)},
                               ignore=resume_may_change(state.search_config.get("fitness", "proxy")))
        if changed:
            raise InputsChangedError(
                f"cannot resume {run_dir}: the search settings differ from the run's in {', '.join(changed)}; "
                "the result would differ from an uninterrupted run. Resume with the run's settings (drop these "
                "--set values), or start a new run")
        truncate_jsonl(history_path, state.history_len)
        return state, read_jsonl(history_path)
    if history_path.exists():
        history_path.unlink()  # a run killed before its first checkpoint starts over
    return None, []


def _digest(search: CoevolutionSearch) -> str:
    """A hash of everything the next generation depends on: populations, their terms, the rng."""
    h = hashlib.sha256(json.dumps(search.rng.bit_generator.state, sort_keys=True, default=str).encode())
    for d in DIRECTIONS:
        pop = search.populations[d]
        h.update(np.stack(pop.bits()).tobytes())
        h.update(np.array([c.terms.to_row() for c in pop.members], dtype=np.float64).tobytes())
    return h.hexdigest()


def _finish(search: CoevolutionSearch, run_dir: Path, summary: Dict) -> None:
    atomic_write_text(run_dir / "search.json", json.dumps(summary, indent=2) + "\n")
    try:
        from .plots import plot_history

        plot_history(search.history, {d: search.best(d).genome for d in DIRECTIONS}, run_dir / "plots")
    except Exception as e:  # plots are a convenience; never lose a finished search over one
        log.warning("could not draw plots: %s", e)


def _write_best(search: CoevolutionSearch, run_dir: Path, cfg: Config) -> None:
    for d in DIRECTIONS:
        cand = search.best(d)
        genome = cand.genome.copy()
        genome.meta = {
            "method": "coevo-search",
            "direction": d,
            "generation": search.generation,
            "metric": search.ctx.metric_name,
            "macs_ratio": cfg.search.macs_ratio if cfg.search.compute == "budget" else None,
            "max_ms": search.ctx.budget.max_ms,
            "size": [search.ctx.budget.size, search.ctx.budget.size],
            "convention": MACS_CONVENTION,
            "terms": cand.terms.to_dict(),
            "chosen_by": "trained fitness (search.rerank_top)" if search.final else "fitness",
        }
        genome.save_json(run_dir / "genomes" / f"best_{d}.json")


def _search_summary(search: CoevolutionSearch, cfg: Config, paths: TeacherPaths) -> Dict:
    from ..models.family import family_name
    from ..prune import count_params

    budget = search.ctx.budget
    out = {
        "metric": search.ctx.metric_name,
        "fitness": cfg.search.fitness,
        "trained_steps": search.ctx.trained_steps,
        "supernet": search.ctx.supernet,  # the folder candidates took their weights from (None: the teacher)
        "compute": cfg.search.compute,
        "macs_size": [budget.size, budget.size],
        "macs_convention": MACS_CONVENTION,
        "teacher_macs": budget.teacher_macs,
        "budget_macs": budget.max_macs,
        "macs_ratio": budget.macs_ratio,
        "min_channels": budget.min_channels,  # search.min_channels, raised by search.width_floor
        "width_floor": cfg.search.width_floor,
        "seed": cfg.seed,
        "generations": search.generation,
        "population": cfg.search.population,
        "eval_images": int(search.ctx["G_A"].inputs.shape[0]),
        "eval_size": cfg.search.eval_size,
        "wall_time_s": round(search.elapsed_s, 3),
        "evaluations": search.evaluator.evaluations,
        "cache_hits": search.evaluator.cache_hits,
        "teacher": paths.to_dict(),
        # resnet | unet: the teacher's generator family, as found in its files (teacher_arch: the rest)
        "generator_family": family_name(search.ctx["G_A"].teacher.arch),
        "best": {},
    }
    if search.reranking:
        out["rerank"] = {"best_terms": "trained fitness of the chosen candidate", "top": cfg.search.rerank_top, "trained_steps": cfg.search.trained_steps,
                         "candidates": search.reranking}
    table = budget.latency_table
    if table is not None:
        out["latency"] = {"target": table.target, "threads": table.threads, "size": table.size,
                          "teacher_ms_predicted": budget.teacher_ms, "budget_ms": budget.max_ms}
    for d in DIRECTIONS:
        cand = search.best(d)
        teacher_arch = search.ctx[d].teacher.arch
        out["best"][d] = {
            **cand.terms.to_dict(),
            "macs_ratio": cand.terms.macs / budget.teacher_macs,
            "teacher_params": count_params(teacher_arch),
            "widths": cand.genome.widths(),
            "teacher_widths": dict(teacher_arch.widths),
            "teacher_arch": teacher_arch.to_dict(),  # norm, dropout and channels as inferred from the files
        }
        if table is not None:
            out["best"][d]["predicted_ms"] = table.predict(cand.genome.arch.with_widths(cand.genome.widths()))
    return out
