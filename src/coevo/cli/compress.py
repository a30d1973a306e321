"""`coevo compress`: placeholder until its issue lands."""


def add_parser(sub):
    p = sub.add_parser("compress", help="(not yet implemented)")
    p.set_defaults(func=run)


def run(args):
    raise SystemExit("coevo compress is not implemented yet")
