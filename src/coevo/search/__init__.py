"""Co-evolutionary search over both CycleGAN generators (Shu et al., ICCV 2019), corrected and fast.

Typical use::

    from coevo.config import load_config
    from coevo.search import run_search

    cfg = load_config("configs/demo.yaml", ["search.macs_ratio=0.25"])
    result = run_search(cfg, "runs/search", teacher="runs/teacher_demo")
    result.best["G_A"].save_json("g_a.genome.json")

Pieces, one idea per module: :mod:`.context` (evaluation batch, teacher outputs,
budget: computed once), :mod:`.fitness` (terms and cached evaluation),
:mod:`.operators` (selection, crossover, mutation, breeding), :mod:`.population`
(populations and budget repair), :mod:`.evolve` (the loop), :mod:`.state`
(checkpoint format), :mod:`.runner` (run folder), :mod:`.plots`.
See docs/search.md.
"""
from .context import (
    DIRECTIONS,
    MACS_CONVENTION,
    MACS_SIZE,
    Budget,
    DirectionContext,
    SearchContext,
    build_context,
    check_budget,
    eval_batch,
    load_teacher,
    make_context,
)
from .evolve import CoevolutionSearch, check_search_config
from .fitness import Evaluator, FitnessTerms, Objective, dropped_filters, evaluate_genomes
from .operators import (
    CROSSOVERS,
    MUTATIONS,
    SELECTIONS,
    BitFlip,
    Breeder,
    RouletteSelection,
    SegmentFlip,
    TournamentSelection,
    TwoPointCrossover,
    UniformCrossover,
)
from .population import Candidate, Population, Repairer, initial_population
from .runner import SearchResult, read_search_run, run_search
from .state import SearchState, load_state, save_state

__all__ = [
    "DIRECTIONS", "MACS_CONVENTION", "MACS_SIZE", "Budget", "DirectionContext", "SearchContext",
    "build_context", "check_budget", "eval_batch", "load_teacher", "make_context",
    "CoevolutionSearch", "check_search_config",
    "Evaluator", "FitnessTerms", "Objective", "dropped_filters", "evaluate_genomes",
    "CROSSOVERS", "MUTATIONS", "SELECTIONS", "BitFlip", "Breeder", "RouletteSelection", "SegmentFlip",
    "TournamentSelection", "TwoPointCrossover", "UniformCrossover",
    "Candidate", "Population", "Repairer", "initial_population",
    "SearchResult", "read_search_run", "run_search", "SearchState", "load_state", "save_state",
]
