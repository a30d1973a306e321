"""`coevo demo`: placeholder until its issue lands."""


def add_parser(sub):
    p = sub.add_parser("demo", help="(not yet implemented)")
    p.set_defaults(func=run)


def run(args):
    raise SystemExit("coevo demo is not implemented yet")
