"""coevo: co-evolutionary compression of CycleGAN generators.

Public API (everything else is internal and may change)::

    from coevo import load_generator, save_generator, ResnetGenerator, GeneratorArch

    # a whole job, and reading its folder back
    from coevo import Pipeline, load_config, open_run, read_search_run
    # channel space: genomes, slimming, MAC counts, the L1-norm baseline
    from coevo import Genome, slim, count_macs, count_params, l1_genome_for_macs, macs_ratio_of
    # using and measuring generators (images are NCHW, RGB, float in [-1, 1])
    from coevo import translate_images, translation_quality, psnr, ssim, make_grid_image
    from coevo import benchmark_models, machine_info, format_table

Every name is imported on first use, so ``import coevo`` (and ``coevo --help``) does not load torch.
"""
import importlib
import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# name -> submodule that defines it; resolved by __getattr__ on first access.
_LAZY = {
    "Config": "config", "ConfigError": "config", "load_config": "config",
    "CheckpointError": "models", "DiscriminatorArch": "models", "GeneratorArch": "models",
    "NLayerDiscriminator": "models", "ResnetGenerator": "models", "load_discriminator": "models",
    "load_generator": "models", "save_discriminator": "models", "save_generator": "models",
    "Pipeline": "pipeline",
    "PipelineRun": "evaluation.results", "open_run": "evaluation.results",
    "SearchResult": "search.runner", "read_search_run": "search.runner", "run_search": "search.runner",
    "Genome": "prune", "slim": "prune", "count_macs": "prune", "count_params": "prune",
    "l1_genome_for_macs": "prune", "macs_ratio_of": "prune",
    "translate_images": "evaluation.translate",
    "translation_quality": "evaluation.evaluate", "evaluate_generator": "evaluation.evaluate",
    "psnr": "evaluation.metrics", "ssim": "evaluation.metrics",
    "make_grid_image": "evaluation.viz", "save_grid": "evaluation.viz",
    "benchmark_models": "deploy.bench", "machine_info": "deploy.timing", "format_table": "deploy.bench",
    "BenchResult": "deploy.bench",
    "read_jsonl": "core.runs", "RunDirError": "core.runs",
    "DataError": "data.errors",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'coevo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    *_LAZY,
    "__version__",
]
