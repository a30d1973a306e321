"""A pipeline run folder read back as named paths: what notebooks and scripts need to load its models.

The layout is the one :class:`coevo.pipeline.Pipeline` writes (``data/``, ``teacher/``,
``search/``, ``finetune/``, ``export/``, ``bench/``). Example::

    run = open_run("runs/demo")
    teacher = load_generator(run.teacher.G_A)        # A -> B
    student = load_generator(run.compressed["G_A"])
    history = run.search()                           # a coevo.search.SearchResult
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

from ..config import Config, load_config
from ..models.teacher import TeacherPaths
from ..core.runs import RunDirError

GENERATORS = ("G_A", "G_B")


@dataclass
class PipelineRun:
    """Paths of one pipeline run. ``teacher.G_A`` and ``compressed["G_A"]`` translate A -> B."""

    root: Path
    config: Config
    data_root: Path                 # trainA, trainB, testA, testB (+ testA_gt_B, testB_gt_A when synthetic)
    teacher: TeacherPaths           # G_A, G_B, D_A, D_B of the original CycleGAN
    compressed: Dict[str, Path]     # "G_A" / "G_B" -> fine-tuned slim generator (finetune/G_*.pt)
    stages_done: List[str]

    def dir(self, stage: str) -> Path:
        return self.root / stage

    def search(self):
        """The search stage read back: :func:`coevo.search.read_search_run` of ``search/``."""
        from ..search.runner import read_search_run

        return read_search_run(self.dir("search"))


def open_run(path: str | Path, need: Sequence[str] = ("search", "finetune")) -> PipelineRun:
    """Read the run folder ``path`` of ``coevo compress`` / ``coevo demo``.

    ``need``: stages that must have finished (each leaves ``stage.json``); the default is
    what it takes to compare the teacher with the compressed pair. Raises
    :class:`coevo.core.runs.RunDirError` naming what is missing and how to get it.
    """
    from ..pipeline import STAGES, Pipeline, stage_done

    root = Path(path)
    if not (root / "config.yaml").is_file():
        raise RunDirError(f"{root} is not a coevo run folder (no config.yaml); make one with "
                          f"`coevo demo --out {root}` or `coevo compress --config ... --out {root}`")
    done = [s for s in STAGES if stage_done(root / s)]
    missing = [s for s in need if s not in done]
    if missing:
        raise RunDirError(f"{root}: stage(s) {', '.join(missing)} not finished; finish the run with "
                          f"`coevo compress --config {root / 'config.yaml'} --out {root} --resume`")
    cfg = load_config(root / "config.yaml")
    pipe = Pipeline(cfg, root)
    return PipelineRun(
        root=root,
        config=cfg,
        # A synthetic set lives in the run's data/ (not at the absolute data.root the config
        # recorded), so a moved or copied run still opens.
        data_root=pipe.data_root(),
        teacher=pipe.teacher_paths(),
        compressed={g: root / "finetune" / f"{g}.pt" for g in GENERATORS},
        stages_done=done,
    )
