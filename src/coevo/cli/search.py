"""`coevo search`: placeholder until its issue lands."""


def add_parser(sub):
    p = sub.add_parser("search", help="(not yet implemented)")
    p.set_defaults(func=run)


def run(args):
    raise SystemExit("coevo search is not implemented yet")
