"""The teacher arguments shared by `coevo search` and `coevo compress`."""
from __future__ import annotations

import argparse


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
