"""`coevo data`: placeholder until its issue lands."""


def add_parser(sub):
    p = sub.add_parser("data", help="(not yet implemented)")
    p.set_defaults(func=run)


def run(args):
    raise SystemExit("coevo data is not implemented yet")
