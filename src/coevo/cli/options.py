"""Command-line options that several subcommands share (no heavy imports: `coevo --help` builds them all)."""
from __future__ import annotations


def add_trust_model(parser) -> None:
    """``--trust-model``: run the program inside a .pt2 or TorchScript file instead of rebuilding it."""
    parser.add_argument(
        "--trust-model", action="store_true",
        help="run the exported program inside a .pt2 or TorchScript --model file. Loading such a program can "
             "run code it holds, so by default coevo rebuilds the generator from the weights and architecture "
             "stored in the file and runs nothing from it; give this flag only for files whose origin you trust")
