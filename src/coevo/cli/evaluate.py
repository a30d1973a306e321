"""`coevo evaluate`: placeholder until its issue lands."""


def add_parser(sub):
    p = sub.add_parser("evaluate", help="(not yet implemented)")
    p.set_defaults(func=run)


def run(args):
    raise SystemExit("coevo evaluate is not implemented yet")
