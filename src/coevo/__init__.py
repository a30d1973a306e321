"""coevo: co-evolutionary compression of CycleGAN generators.

Public API (everything else is internal and may change)::

    from coevo import load_generator, save_generator, ResnetGenerator, GeneratorArch
"""
import logging

from .config import Config, ConfigError, load_config
from .models import (
    CheckpointError,
    DiscriminatorArch,
    GeneratorArch,
    NLayerDiscriminator,
    ResnetGenerator,
    load_discriminator,
    load_generator,
    save_discriminator,
    save_generator,
)

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Config", "ConfigError", "load_config",
    "CheckpointError", "DiscriminatorArch", "GeneratorArch", "NLayerDiscriminator", "ResnetGenerator",
    "load_discriminator", "load_generator", "save_discriminator", "save_generator",
    "__version__",
]
