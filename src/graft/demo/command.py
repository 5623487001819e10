"""``graft demo``: the RGB demo (:mod:`graft.demo.run`) or, with ``--multispectral``, its multispectral variant
(:mod:`graft.demo.multispectral`)."""

from __future__ import annotations


def run_demo_command(args) -> int:
    if args.multispectral:
        from graft.demo.multispectral import run_multispectral_demo

        run_multispectral_demo(args.out or "runs/demo-ms", quick=args.quick, seed=args.seed)
    else:
        from graft.demo.run import run_demo

        run_demo(args.out or "runs/demo", quick=args.quick, seed=args.seed)
    return 0
