"""`coevo prune`: placeholder until its issue lands."""


def add_parser(sub):
    p = sub.add_parser("prune", help="(not yet implemented)")
    p.set_defaults(func=run)


def run(args):
    raise SystemExit("coevo prune is not implemented yet")
