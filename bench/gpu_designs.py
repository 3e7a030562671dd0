"""The GPU design's variants on the Gaussian simulation: `python -m bench.gpu_designs [--studies N] [--whole SEEDS]`.

Each variant changes the shipped GPU comparison design's tuning seeds per value, confirm pairs or looks, and runs the
whole procedure (study.analysis.simulate.procedure_rates) on the landscape it is meant to lift, "2D 3% worse and 30%
faster". `--whole SEEDS` then runs every landscape at that many tuning seeds, to see what the variant costs elsewhere.
It prints the tables of docs/analysis.md ("The GPU design's one row under 95%")."""

from __future__ import annotations

import argparse
from typing import Optional

from study.analysis.simulate import LANDSCAPES, Design, procedure_designs, procedure_rates

TARGET = "2D 3% worse and 30% faster at the optima"
VARIANTS = [(20, 24, 2), (20, 24, 1), (20, 36, 2), (20, 36, 3), (20, 48, 2), (20, 48, 3), (24, 24, 2), (26, 20, 2),
            (26, 24, 2), (28, 16, 2), (28, 24, 2), (30, 24, 2), (30, 36, 3)]  # (tuning seeds, pairs, looks)


def variant(d: Design, tune_seeds: int) -> Design:
    """The design with `tune_seeds` tuning seeds per value."""
    return d._replace(tune=d.tune.model_copy(update={"seeds": tune_seeds}))


def rates(d: Design, land_index: int, pairs: int, looks: int, n: int) -> dict:
    """procedure_rates on LANDSCAPES[land_index], seeded by its index as the procedure table is."""
    return procedure_rates(LANDSCAPES[land_index], d.tune, pairs, d.frames, n=n, seed=land_index, looks=looks,
                           boundaries=d.boundaries)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_designs", description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=300, help="simulated procedures per row")
    p.add_argument("--whole", type=int, default=None, help="also every landscape at this many tuning seeds")
    a = p.parse_args(argv)
    gpu = procedure_designs()[1]
    target = next(i for i, land in enumerate(LANDSCAPES) if land.name == TARGET)
    print(f"{TARGET}:\n\n| tuning seeds per value | pairs | looks ({gpu.boundaries}) | -> 3d | coverage (95%) | "
          "trials per study |\n|---|---|---|---|---|---|")
    for seeds, pairs, looks in VARIANTS:
        r = rates(variant(gpu, seeds), target, pairs, looks, a.studies)
        print(f"| {seeds} | {pairs} | {looks} | {100 * r['right']:.1f}% | {100 * r['coverage_95']:.1f}% | "
              f"{r['trials']:.0f} |", flush=True)
    if a.whole:
        d = variant(gpu, a.whole)
        print(f"\nEvery landscape at {a.whole} tuning seeds per value, {d.seeds} pairs, {d.looks} looks:\n\n"
              "| landscape | right | wrong | coverage (95%) | trials per study |\n|---|---|---|---|---|")
        for i, land in enumerate(LANDSCAPES):
            r = rates(d, i, d.seeds, d.looks, a.studies)
            print(f"| {land.name} | {100 * r['right']:.1f}% | {100 * r['wrong']:.1f}% | "
                  f"{100 * r['coverage_95']:.1f}% | {r['trials']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
