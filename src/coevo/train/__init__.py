"""CycleGAN training: the shared loop, teacher training and fine-tuning of the slim pair.

* :mod:`coevo.train.losses` -- LSGAN, cycle, identity and distillation terms
* :mod:`coevo.train.pool` -- the image history pool
* :mod:`coevo.train.loop` -- :class:`CycleGANTrainer`, the one training loop (checkpoints, exact resume)
* :mod:`coevo.train.teacher` -- :func:`train_teacher` (``coevo train``)
* :mod:`coevo.train.finetune` -- ``finetune(search_dir, out_dir)`` (``coevo finetune``);
  ``finetune_genomes(cfg, teacher_paths, genomes, out_dir)`` for genomes from anywhere
"""
from .init import init_weights
from .loop import CycleGANNets, CycleGANTrainer, GeneratorPair, LoopSettings, TrainingError
from .pool import ImagePool
from .teacher import build_cyclegan, train_teacher

__all__ = [
    "init_weights", "CycleGANNets", "CycleGANTrainer", "GeneratorPair", "LoopSettings", "TrainingError",
    "ImagePool", "build_cyclegan", "train_teacher",
]
