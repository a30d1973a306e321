"""The prunable channel space of a generator: named groups, genomes, slimming, MAC counts, baselines.

Typical use::

    from coevo.prune import Genome, l1_genome_for_macs, slim, count_macs

    genome = l1_genome_for_macs(teacher, macs_ratio=0.25, size=256)
    student = slim(teacher, genome)            # a narrower ResnetGenerator
    count_macs(student.arch, 256)              # published convention (56.8G for the full net)
    genome.save_json("student.genome.json")
"""
from .baselines import filter_importance, l1_genome, l1_genome_for_macs, macs_ratio_of, random_genome_for_macs
from .budget import (
    WidthFitter,
    genome_from_scores,
    keep_top,
    random_scores,
    repair_to_budget,
    round_to_multiple,
    round_widths,
    teacher_budget,
)
from .genome import GENOME_FORMAT, Genome, GenomeError, bit_layout, layout_names
from .groups import ChannelGroup, channel_groups, conv_group_map, conv_names
from .macs import (
    MAC_CONVENTIONS,
    BudgetError,
    MacTable,
    count_macs,
    count_params,
    macs_from_widths,
    macs_of_genome,
    min_macs,
)
from .slim import MaskedGenerator, masked_generator, slim

__all__ = [
    "ChannelGroup", "channel_groups", "conv_group_map", "conv_names",
    "Genome", "GenomeError", "GENOME_FORMAT", "bit_layout", "layout_names",
    "slim", "masked_generator", "MaskedGenerator",
    "MAC_CONVENTIONS", "count_macs", "count_params", "macs_of_genome", "macs_from_widths", "MacTable",
    "min_macs", "BudgetError",
    "filter_importance", "l1_genome", "l1_genome_for_macs", "random_genome_for_macs", "macs_ratio_of",
    "repair_to_budget", "round_widths", "round_to_multiple", "WidthFitter", "keep_top",
    "genome_from_scores", "random_scores", "teacher_budget",
]
