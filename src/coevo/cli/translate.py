"""`coevo translate`: placeholder until its issue lands."""


def add_parser(sub):
    p = sub.add_parser("translate", help="(not yet implemented)")
    p.set_defaults(func=run)


def run(args):
    raise SystemExit("coevo translate is not implemented yet")
