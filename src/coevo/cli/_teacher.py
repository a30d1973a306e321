"""The teacher arguments shared by `coevo search`, `supernet`, `finetune` and `compress`."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_teacher_arguments(p: argparse.ArgumentParser, folder_help: str) -> None:
    p.add_argument("--teacher", metavar="FOLDER", help=folder_help)
    p.add_argument("--teacher-ab", metavar="FILE",
                   help="instead of --teacher: the A->B generator file alone, e.g. "
                        "horse2zebra_pretrained/latest_net_G.pth (needs --teacher-ba)")
    p.add_argument("--teacher-ba", metavar="FILE",
                   help="instead of --teacher: the B->A generator file, e.g. zebra2horse_pretrained/latest_net_G.pth")


def teacher_from_args(args: argparse.Namespace):
    """:class:`~coevo.models.teacher.TeacherPaths` from the flags, or None when none was given."""
    if args.teacher is None and args.teacher_ab is None and args.teacher_ba is None:
        return None
    from ..models.teacher import resolve_teacher

    return resolve_teacher(args.teacher, args.teacher_ab, args.teacher_ba)


def teacher_and_config(args: argparse.Namespace, what: str):
    """``(teacher paths or None, config path)`` of a job that starts from a teacher or resumes ``--out``.

    A new run needs a teacher; a resumed one reads the run's own ``config.yaml`` and teacher
    record (``--config`` still wins). ``what`` names the run in messages ("search", "supernet run").
    """
    from ..core.runs import RunDirError
    from .common import apply_restart

    out = Path(args.out)
    if args.resume and args.force:
        raise RunDirError("--resume and --force contradict each other; choose one")
    apply_restart(args)
    teacher = teacher_from_args(args)  # on --resume, None: the run's teacher.json
    if args.resume:
        if not (out / "config.yaml").exists():
            raise RunDirError(f"cannot resume: {out} holds no {what} (config.yaml missing); drop --resume")
        return teacher, args.config or out / "config.yaml"
    if teacher is None:
        raise RunDirError(f"a new {what} needs a teacher: --teacher FOLDER, or --teacher-ab FILE --teacher-ba FILE")
    return teacher, args.config
