"""`coevo finetune`: placeholder until its issue lands."""


def add_parser(sub):
    p = sub.add_parser("finetune", help="(not yet implemented)")
    p.set_defaults(func=run)


def run(args):
    raise SystemExit("coevo finetune is not implemented yet")
