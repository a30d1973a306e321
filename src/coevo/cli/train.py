"""`coevo train`: placeholder until its issue lands."""


def add_parser(sub):
    p = sub.add_parser("train", help="(not yet implemented)")
    p.set_defaults(func=run)


def run(args):
    raise SystemExit("coevo train is not implemented yet")
