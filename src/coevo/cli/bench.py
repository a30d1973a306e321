"""`coevo bench`: placeholder until its issue lands."""


def add_parser(sub):
    p = sub.add_parser("bench", help="(not yet implemented)")
    p.set_defaults(func=run)


def run(args):
    raise SystemExit("coevo bench is not implemented yet")
