"""The co-evolution loop: two populations, one per generator, evolved in turn.

Generation 0 evaluates both random initial populations (optionally seeded with
the L1-norm genome), closing the cycle through the other TEACHER generator,
since no best exists yet. Every later generation ``g``:

1. population G_A is re-scored against the current best of G_B (cached when
   that best did not change), the elites are kept, children are bred, repaired
   and scored against the same partner; G_A's best is the best of the result;
2. population G_B does the same against the NEW best of G_A.

All randomness comes from one ``numpy.random.Generator`` seeded with the
config's seed; its state is part of the checkpoint.

Under torchrun every rank runs this loop: the :class:`Evaluator` shards each
call's evaluations across the ranks and hands every rank every result, so the
same seeded generator draws the same genomes on every rank; nothing else is sent.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from typing import Callable, Dict, List, Optional

import numpy as np

from ..prune import Genome, l1_genome_for_macs
from ..prune.baselines import l1_genome_for_latency
from .context import DIRECTIONS, MACS_CONVENTION, PARTNER, SearchContext
from .fitness import Evaluator, FitnessTerms, Objective
from .operators import Breeder
from .population import Candidate, Population, Repairer, initial_population
from .state import PopulationState, SearchState
from ..errors import ConfigError

log = logging.getLogger(__name__)

GenerationCallback = Callable[["CoevolutionSearch", Dict], None]


def check_search_config(s) -> None:
    """ConfigError for search settings that would only fail later; the rules live in :mod:`coevo.config`."""
    from ..config import validate_section

    validate_section("search", s)


def _population_summary(pop: Population) -> Dict:
    terms = [c.terms for c in pop.members]
    best = pop.best()
    mean = {k: float(np.mean([getattr(t, k) for t in terms]))
            for k in ("fitness", "perceptual", "cycle", "quality", "macs", "params")}
    return {"best": best.terms.to_dict(), "mean": mean, "best_widths": best.genome.widths(),
            "unique": len({c.genome.key() for c in pop.members})}


class CoevolutionSearch:
    """Evolves a population for ``G_A`` and one for ``G_B`` (see the module docstring).

    ``search_cfg`` is a :class:`coevo.config.SearchConfig`; ``seed`` seeds the one
    numpy generator. Call :meth:`run`, or :meth:`initialise` then :meth:`step`.
    """

    def __init__(self, ctx: SearchContext, search_cfg, seed: int) -> None:
        check_search_config(search_cfg)
        self.ctx, self.cfg, self.seed = ctx, search_cfg, int(seed)
        self.objective = Objective.from_config(search_cfg, images=int(ctx["G_A"].inputs.shape[0]))
        # Between two turns of one population the other one inserts about 2P outputs;
        # 4P entries keep the current population's outputs for its re-scoring.
        self.evaluator = Evaluator(ctx, self.objective, output_cache_size=4 * search_cfg.population)
        self.breeder = Breeder.from_config(search_cfg)
        self.repairers = {
            d: Repairer(ctx[d].teacher.arch, ctx.budget, search_cfg.tied, ctx.budget.min_channels,
                        search_cfg.channel_multiple, search_cfg.repair, ctx[d].importance)
            for d in DIRECTIONS
        }
        self.rng = np.random.default_rng(self.seed)
        self.populations: Dict[str, Population] = {}
        self.generation = -1  # generations completed; 0 = initial populations scored
        self.history: List[Dict] = []
        self.elapsed_s = 0.0
        self.final: Dict[str, Candidate] = {}  # set by rerank(): the result instead of each best
        self.reranking: Dict[str, List[Dict]] = {}

    # ------------------------------------------------------------------ the algorithm
    def best(self, direction: str) -> Candidate:
        """The result for ``direction``: the population's best, or after :meth:`rerank` its choice."""
        if direction in self.final:
            return self.final[direction]
        return self.populations[direction].best()

    def rerank(self, top: int) -> Dict[str, List[Dict]]:
        """Re-score the ``top`` best distinct genomes of each final population, and the L1 seed,
        with the trained fitness (``search.trained_steps`` distillation steps from inherited weights,
        then perceptual + cycle); the best by it becomes :meth:`best`. G_A is chosen against the
        proxy best G_B, then G_B against the chosen G_A, as in a generation. Deterministic; returns
        per direction the candidates with both fitnesses (also kept in ``self.reranking``).
        """
        s = self.cfg
        trained = replace(self.ctx, trained_steps=int(s.trained_steps), trained_lr=float(s.trained_lr))
        evaluator = Evaluator(trained, self.objective, output_cache_size=2 * (top + 1))
        self.final, self.reranking = {}, {}
        for d in DIRECTIONS:
            pop = self.populations[d]
            pool: Dict[bytes, Dict] = {}
            for i in pop.ranking():
                key = pop.members[i].genome.to_bits().tobytes()
                if key not in pool and len(pool) < top:
                    pool[key] = {"source": f"rank {len(pool) + 1}", "candidate": pop.members[i]}
            for genome in self._seeds(d):
                key = genome.to_bits().tobytes()
                if key in pool:
                    pool[key]["source"] += " = l1 seed"
                else:
                    pool[key] = {"source": "l1 seed", "candidate": Candidate(genome)}
            entries = list(pool.values())
            partner = self.best(PARTNER[d]).genome
            terms = evaluator.evaluate(d, [e["candidate"].genome for e in entries], partner)
            rows = []
            for e, t in zip(entries, terms):
                proxy = e["candidate"].terms
                rows.append({"source": e["source"], "widths": e["candidate"].genome.widths(),
                             "proxy_fitness": None if proxy is None else proxy.fitness,
                             "trained_fitness": t.fitness, "trained_perceptual": t.perceptual,
                             "trained_cycle": t.cycle, "macs": t.macs})
            pick = int(np.argmax([t.fitness for t in terms]))  # ties: the better proxy rank
            rows[pick]["chosen"] = True
            self.final[d] = Candidate(entries[pick]["candidate"].genome, terms[pick])
            self.reranking[d] = rows
            log.info("rerank %s: %d candidates by the trained fitness (%d steps); chose %s "
                     "(trained fitness %.4g; the proxy best's %.4g)", d, len(rows), s.trained_steps,
                     rows[pick]["source"], terms[pick].fitness, terms[0].fitness)
        return self.reranking

    def _seeds(self, direction: str) -> List[Genome]:
        s = self.cfg
        if not s.seed_with_l1:
            return []
        budget = self.ctx.budget
        if budget.latency_table is not None:
            return [l1_genome_for_latency(self.ctx[direction].teacher, budget.latency_table, budget.max_ms,
                                          budget.min_channels, s.channel_multiple, tied=s.tied)]
        # In reward mode there is no cap; the seed still sits at macs_ratio.
        return [l1_genome_for_macs(self.ctx[direction].teacher, s.macs_ratio, budget.size, budget.min_channels,
                                   s.channel_multiple, MACS_CONVENTION, tied=s.tied)]

    def initialise(self) -> Dict:
        """Generation 0: random (and seeded) populations, scored with the teacher as cycle partner."""
        t0 = time.perf_counter()
        s = self.cfg
        for d in DIRECTIONS:
            arch = self.ctx[d].teacher.arch
            self.populations[d] = initial_population(d, arch, self.repairers[d], s.population, s.init_density,
                                                     self.rng, self._seeds(d))
        for d in DIRECTIONS:
            teacher_partner = Genome.all_keep(self.ctx[PARTNER[d]].teacher.arch, tied=s.tied)
            pop = self.populations[d]
            pop.set_terms(self.evaluator.evaluate(d, pop.genomes, teacher_partner))
        self.generation = 0
        return self._record(time.perf_counter() - t0)

    def _evolve(self, direction: str) -> None:
        s = self.cfg
        partner = self.best(PARTNER[direction]).genome
        pop = self.populations[direction]
        pop.set_terms(self.evaluator.evaluate(direction, pop.genomes, partner))
        elites = [Candidate(pop.members[i].genome, pop.members[i].terms) for i in pop.ranking()[: s.elitism]]
        bits = self.breeder.breed(pop.bits(), pop.fitness(), s.population - len(elites), self.rng)
        children = [Candidate(self.repairers[direction](b, self.rng)) for b in bits]
        new = Population(direction, elites + children)
        new.set_terms(self.evaluator.evaluate(direction, new.genomes, partner))
        self.populations[direction] = new

    def step(self) -> Dict:
        """One generation: G_A against the best G_B, then G_B against the new best G_A."""
        if self.generation < 0:
            raise RuntimeError("call initialise() (or restore()) before step()")
        t0 = time.perf_counter()
        for d in DIRECTIONS:
            self._evolve(d)
        self.generation += 1
        return self._record(time.perf_counter() - t0)

    def _record(self, seconds: float) -> Dict:
        self.elapsed_s += seconds
        record = {
            "generation": self.generation,
            "evaluations": self.evaluator.evaluations,
            "cache_hits": self.evaluator.cache_hits,
            "seconds": round(seconds, 4),
        }
        for d in DIRECTIONS:
            record[d] = _population_summary(self.populations[d])
        self.history.append(record)
        return record

    def run(self, generations: Optional[int] = None, callback: Optional[GenerationCallback] = None,
            progress: bool = True) -> Dict[str, Candidate]:
        """Run (or continue) to ``generations`` (default: the config's); returns the best per direction.

        ``callback(search, record)`` runs after every generation, including 0 (the
        run folder's checkpointing hooks in here).
        """
        from tqdm.auto import tqdm

        total = self.cfg.generations if generations is None else int(generations)
        bar = tqdm(total=total + 1, initial=self.generation + 1, desc="search", unit="gen",
                   disable=None if progress else True, dynamic_ncols=True)
        try:
            while self.generation < total:
                record = self.initialise() if self.generation < 0 else self.step()
                bar.update(1)
                bar.set_postfix_str(_postfix(record))
                if callback is not None:
                    callback(self, record)
        finally:
            bar.close()
        return {d: self.best(d) for d in DIRECTIONS}

    # ------------------------------------------------------------------ checkpointing
    def state(self) -> SearchState:
        return SearchState(
            generation=self.generation,
            rng_state=self.rng.bit_generator.state,
            populations={
                d: PopulationState(np.stack(p.bits()), np.array([c.terms.to_row() for c in p.members]))
                for d, p in self.populations.items()
            },
            cache=self.evaluator.cache_state(),
            history_len=len(self.history),
            elapsed_s=self.elapsed_s,
            tied=bool(self.cfg.tied),
            search_config=asdict(self.cfg),
        )

    def restore(self, state: SearchState, history: Optional[List[Dict]] = None) -> None:
        """Continue from ``state`` (and the history lines written up to it)."""
        if state.tied != bool(self.cfg.tied):
            raise ConfigError("search.tied differs from the run being resumed; it cannot change mid-search")
        self.rng.bit_generator.state = state.rng_state
        self.populations = {}
        for d, ps in state.populations.items():
            arch = self.ctx[d].teacher.arch
            members = [Candidate(Genome.from_bits(arch, b, tied=state.tied), FitnessTerms.from_row(r))
                       for b, r in zip(ps.bits, ps.terms)]
            self.populations[d] = Population(d, members)
        self.evaluator.load_cache_state(state.cache)
        self.generation = state.generation
        self.elapsed_s = state.elapsed_s
        self.history = list(history or [])[: state.history_len]


def _postfix(record: Dict) -> str:
    parts = []
    for d in DIRECTIONS:
        b = record[d]["best"]
        parts.append(f"{d} fit {b['fitness']:.4g} {b['macs'] / 1e9:.3g}G")
    return " | ".join(parts)
