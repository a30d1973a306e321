"""Fitness of a genome: perceptual distance to the teacher, cycle consistency, compute.

For a candidate genome of ``G_A`` (symmetrically ``G_B``) on the evaluation
batch ``x`` (domain A):

* ``perceptual`` = mean over images of metric(candidate(x), teacher(x));
* ``cycle`` = mean L1(partner(candidate(x)), x), with ``partner`` the slim
  network of the other population's current best genome;
* ``quality`` = weight_perceptual * perceptual + weight_cycle * cycle (lower is better);
* ``fitness`` (HIGHER is better, what selection maximises) = 1 / quality, plus
  ``weight_compute * n / 500 * dropped`` filters in the paper's reward mode
  (see below). In budget mode every genome already meets the MAC cap (see
  :class:`coevo.prune.budget.Repairer`), so the compute term is the constraint itself.

Terms are means over the batch, so the weights mean the same thing whatever
its size. The paper's reward, ``500 / sum_i q_i + 0.001 * dropped`` over ``n``
images, ranks genomes exactly as ``1 / mean q + 0.001 * n / 500 * dropped``
(multiply by ``n / 500``): reward mode therefore scales ``weight_compute`` by
``n / PAPER_REWARD_SCALE`` with ``n`` the evaluation images per domain, which
keeps the paper's balance between quality and compute.

The evaluation of a list of genomes is a pure function of (genomes, partner,
context): :func:`evaluate_genomes`. :class:`Evaluator` adds caches around it
without changing any result.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..core import distributed
from ..core.guards import NonFiniteError
from ..models import ResnetGenerator
from ..core.precision import autocast
from ..prune import Genome, count_params, macs_of_genome, slim
from .context import SearchContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitnessTerms:
    """Every term of one evaluation. ``macs``: one 256x256 forward, published convention."""

    perceptual: float
    cycle: float
    quality: float
    macs: int
    params: int
    dropped: int
    fitness: float

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)

    def to_row(self) -> List[float]:
        return [float(getattr(self, f.name)) for f in fields(self)]

    @classmethod
    def from_row(cls, row: Sequence[float]) -> "FitnessTerms":
        kw = {}
        for f, v in zip(fields(cls), row):
            kw[f.name] = int(v) if f.type in (int, "int") else float(v)
        return cls(**kw)


# The numerator of the paper's quality reward (500 / summed losses); see the module docstring.
PAPER_REWARD_SCALE = 500.0


@dataclass(frozen=True)
class Objective:
    """How the terms combine into one fitness (see the module docstring).

    ``images``: evaluation images per domain, which sets the reward's balance.
    """

    weight_perceptual: float = 1.0
    weight_cycle: float = 10.0
    compute: str = "budget"
    weight_compute: float = 0.001
    images: int = 1

    @classmethod
    def from_config(cls, s, images: int | None = None) -> "Objective":
        n = int(images) if images is not None else int(s.eval_images)
        return cls(float(s.weight_perceptual), float(s.weight_cycle), s.compute, float(s.weight_compute), n)

    @property
    def reward_per_filter(self) -> float:
        """Fitness per dropped filter in reward mode: the paper's weight, rescaled to mean losses."""
        return self.weight_compute * self.images / PAPER_REWARD_SCALE

    def score(self, perceptual: float, cycle: float, macs: int, params: int, dropped: int) -> FitnessTerms:
        quality = self.weight_perceptual * perceptual + self.weight_cycle * cycle
        fitness = 1.0 / max(quality, 1e-12)
        if self.compute == "reward":
            fitness += self.reward_per_filter * dropped
        return FitnessTerms(float(perceptual), float(cycle), float(quality), int(macs), int(params),
                            int(dropped), float(fitness))


def dropped_filters(genome: Genome) -> int:
    """Filters removed, counted per producing conv (a trunk channel is one filter in each of
    1 + n_blocks convs; with tied inner channels, 1 + 2 * n_blocks, as the paper counts)."""
    from ..prune import channel_groups

    full = genome.arch.widths
    kept = genome.widths()
    return int(sum((full[g.name] - kept[g.name]) * len(g.producers) for g in channel_groups(genome.arch)))


def genome_hex(genome: Genome) -> str:
    """Stable text key of a genome's bit string (cache keys that survive a checkpoint)."""
    return np.packbits(genome.to_bits()).tobytes().hex()


def slim_network(teacher: ResnetGenerator, genome: Genome) -> ResnetGenerator:
    with torch.no_grad():
        return slim(teacher, genome).eval()


def distil(net: ResnetGenerator, inputs: torch.Tensor, target: torch.Tensor, steps: int,
           lr: float) -> ResnetGenerator:
    """``net`` after ``steps`` Adam steps of L1 distillation towards ``target`` on ``inputs``
    (NCHW, [-1, 1]); deterministic for given inputs. The trained fitness's short training."""
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999))
    with torch.enable_grad():
        for _ in range(int(steps)):
            opt.zero_grad(set_to_none=True)
            (net(inputs) - target).abs().mean().backward()
            opt.step()
    return net.eval()


def candidate_output(ctx: SearchContext, direction: str, genome: Genome) -> torch.Tensor:
    """The candidate's translation of the evaluation batch, NCHW in [-1, 1], float32.

    The slim network is cut from the direction's :attr:`~coevo.search.context.DirectionContext.source`:
    the teacher, or the supernet with ``search.fitness=supernet``.

    With ``ctx.trained_steps`` (``search.fitness=trained``) the slim network is first
    distilled towards the teacher from its inherited weights (:func:`distil`).
    """
    d = ctx[direction]
    net = slim_network(d.source, genome)
    if ctx.trained_steps:
        net = distil(net, d.inputs, d.teacher_output, ctx.trained_steps, ctx.trained_lr)
    with torch.inference_mode(), autocast(ctx.device, ctx.amp):
        return net(d.inputs).float()


# With search.amp=bf16 the networks run under autocast; the terms are reduced in float32.
def perceptual_term(ctx: SearchContext, direction: str, output: torch.Tensor) -> float:
    d = ctx[direction]
    with torch.inference_mode():
        with autocast(ctx.device, ctx.amp):
            embedding = d.metric.embed(output)
        return float(d.metric.distance([e.float() for e in embedding], d.target).mean())


def cycle_term(ctx: SearchContext, direction: str, output: torch.Tensor, partner: torch.nn.Module) -> float:
    d = ctx[direction]
    with torch.inference_mode():
        with autocast(ctx.device, ctx.amp):
            back = partner(output)
        return float((back.float() - d.inputs).abs().mean())


def compute_terms(genome: Genome) -> Tuple[int, int, int]:
    """``(macs, params, dropped)`` from the architecture alone."""
    from .context import MACS_CONVENTION, macs_side

    return (macs_of_genome(genome, macs_side(genome.arch), convention=MACS_CONVENTION),
            count_params(genome.slim_arch()), dropped_filters(genome))


def check_terms(terms: FitnessTerms, direction: str, genome: Genome) -> FitnessTerms:
    """``terms``, or NonFiniteError when a term is NaN/inf: such a fitness would rank the genome anywhere."""
    for name in ("perceptual", "cycle", "quality", "fitness"):
        value = getattr(terms, name)
        if not math.isfinite(value):
            raise NonFiniteError(
                f"search: the {name} term of a {direction} candidate is {value} (widths {genome.widths()}); "
                "the slim network or the perceptual metric produced NaN/inf on the evaluation images. "
                "Check the teacher with `coevo evaluate` and the data with `coevo data check`; "
                "no genome was saved from this generation"
            )
    return terms


def evaluate_genomes(ctx: SearchContext, direction: str, genomes: Sequence[Genome], partner: Genome,
                     objective: Objective) -> List[FitnessTerms]:
    """Fitness of each genome of ``direction`` with ``partner`` (a genome of the other generator)
    closing the cycle. Pure: depends only on its arguments, so it can be sharded freely."""
    partner_net = slim_network(ctx[ctx[direction].partner].source, partner)
    out = []
    for genome in genomes:
        y = candidate_output(ctx, direction, genome)
        terms = objective.score(perceptual_term(ctx, direction, y), cycle_term(ctx, direction, y, partner_net),
                                *compute_terms(genome))
        out.append(check_terms(terms, direction, genome))
    return out


# What a candidate costs when its output must be computed (its forward, the metric, the partner's
# forward), in units of one with its output cached (the partner's forward): how shard() balances ranks.
NEW_OUTPUT_COST = 2.5


class Evaluator:
    """:func:`evaluate_genomes` with caches; results are identical, only faster.

    * fitness, keyed by (direction, genome, partner): elites and repeated genomes
      are not re-evaluated while the partner is unchanged;
    * the candidate's output and perceptual term, keyed by (direction, genome):
      when the partner changes only the cycle term is recomputed (an LRU of at
      most ``output_cache_size`` entries and ``output_cache_mb`` megabytes);
    * the partner's slim network, keyed by its genome.

    ``evaluations`` counts fitness computations, ``cache_hits`` fitness reuses.
    """

    def __init__(self, ctx: SearchContext, objective: Objective, output_cache_size: int = 128,
                 output_cache_mb: float = 1024.0) -> None:
        self.ctx = ctx
        self.objective = objective
        self.fitness_cache: Dict[str, FitnessTerms] = {}
        self._outputs: "OrderedDict[str, Tuple[torch.Tensor, float]]" = OrderedDict()
        self._output_cache_size = int(output_cache_size)
        self._output_cache_bytes = int(output_cache_mb * 2**20)
        self._cached_bytes = 0
        self._partners: "OrderedDict[str, ResnetGenerator]" = OrderedDict()
        # Under torchrun: the rank that last computed each genome's output (and so may hold it in its cache).
        self._owners: "OrderedDict[str, int]" = OrderedDict()
        self._owners_size = max(1, self._output_cache_size) * distributed.world_size()
        self.evaluations = 0
        self.cache_hits = 0
        self.forward_passes = 0

    def _partner_net(self, direction: str, partner: Genome, key: str) -> ResnetGenerator:
        if key not in self._partners:
            self._partners[key] = slim_network(self.ctx[self.ctx[direction].partner].source, partner)
            while len(self._partners) > 4:
                self._partners.popitem(last=False)
        return self._partners[key]

    def _output(self, direction: str, genome: Genome, key: str) -> Tuple[torch.Tensor, float]:
        hit = self._outputs.get(key)
        if hit is not None:
            self._outputs.move_to_end(key)
            return hit
        y = candidate_output(self.ctx, direction, genome)
        self.forward_passes += 1
        value = (y, perceptual_term(self.ctx, direction, y))
        if self._output_cache_size > 0:
            self._outputs[key] = value
            self._cached_bytes += y.element_size() * y.nelement()
            while self._outputs and (len(self._outputs) > self._output_cache_size
                                     or self._cached_bytes > self._output_cache_bytes):
                old, _ = self._outputs.popitem(last=False)[1]
                self._cached_bytes -= old.element_size() * old.nelement()
        return value

    def _score(self, direction: str, genome: Genome, gkey: str, partner: Genome, partner_key: str) -> FitnessTerms:
        y, perceptual = self._output(direction, genome, gkey)
        cycle = cycle_term(self.ctx, direction, y, self._partner_net(direction, partner, partner_key))
        return check_terms(self.objective.score(perceptual, cycle, *compute_terms(genome)), direction, genome)

    def evaluate(self, direction: str, genomes: Sequence[Genome], partner: Genome) -> List[FitnessTerms]:
        """The terms of each genome against ``partner``.

        Under torchrun the genomes not in the fitness cache are split across the ranks
        (:func:`coevo.core.distributed.shard`), each preferably on the rank that holds its
        output; every rank gets every result, so the caches and counters stay the
        same on every rank and equal to a one-process run's.
        """
        partner_key = f"{self.ctx[direction].partner}:{genome_hex(partner)}"
        gkeys = [f"{direction}:{genome_hex(g)}" for g in genomes]
        keys = [f"{g}|{partner_key}" for g in gkeys]
        todo: Dict[str, int] = {}  # missing key -> index of its first occurrence
        for i, key in enumerate(keys):
            if key not in self.fitness_cache and key not in todo:
                todo[key] = i
        first = list(todo.values())
        owners = [self._owners.get(gkeys[i]) for i in first]
        terms, ranks = distributed.shard(
            lambda i: self._score(direction, genomes[i], gkeys[i], partner, partner_key), first,
            cost=lambda k, r: 1.0 if owners[k] == r else NEW_OUTPUT_COST)
        for i, t, r in zip(first, terms, ranks):
            self.fitness_cache[keys[i]] = t
            self._owners[gkeys[i]] = r
            self._owners.move_to_end(gkeys[i])
        while len(self._owners) > self._owners_size:
            self._owners.popitem(last=False)
        self.evaluations += len(first)
        self.cache_hits += len(keys) - len(first)
        return [self.fitness_cache[k] for k in keys]

    # -- checkpointing: the fitness cache is part of the search state
    def cache_state(self) -> Dict[str, object]:
        keys = list(self.fitness_cache)
        rows = torch.tensor([self.fitness_cache[k].to_row() for k in keys], dtype=torch.float64)
        return {"keys": keys, "rows": rows.reshape(len(keys), len(fields(FitnessTerms))),
                "evaluations": self.evaluations, "cache_hits": self.cache_hits}

    def load_cache_state(self, state: Dict[str, object]) -> None:
        rows = state["rows"].tolist()
        self.fitness_cache = {k: FitnessTerms.from_row(r) for k, r in zip(state["keys"], rows)}
        self.evaluations = int(state["evaluations"])
        self.cache_hits = int(state["cache_hits"])
