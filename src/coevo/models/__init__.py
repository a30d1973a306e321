from .discriminator import DiscriminatorArch, NLayerDiscriminator
from .generator import GeneratorArch, ResnetBlock, ResnetGenerator, full_widths, group_names
from .io import (
    CheckpointError,
    load_discriminator,
    load_generator,
    save_discriminator,
    save_generator,
)

__all__ = [
    "DiscriminatorArch", "NLayerDiscriminator", "GeneratorArch", "ResnetBlock", "ResnetGenerator",
    "full_widths", "group_names", "CheckpointError", "load_discriminator", "load_generator",
    "save_discriminator", "save_generator",
]
