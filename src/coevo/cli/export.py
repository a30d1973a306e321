"""`coevo export`: placeholder until its issue lands."""


def add_parser(sub):
    p = sub.add_parser("export", help="(not yet implemented)")
    p.set_defaults(func=run)


def run(args):
    raise SystemExit("coevo export is not implemented yet")
