"""The `serving` command: bring the platform up and down, inspect it, talk to it, validate configs."""

from __future__ import annotations

import argparse

from serving.cli import admin, models, node, platform, rollout

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The `serving` argument parser with every subcommand."""
    p = argparse.ArgumentParser(prog="serving", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for module in (platform, models, rollout, admin, node):
        module.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the `serving` command with `argv` (default: sys.argv[1:]); returns the exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
