"""The 2D-vs-3D decision report: `python -m study.analyze <study-dir>... [--margin M] [--out DIR]`.

The decision comes from the study's confirm stage alone (study.analysis.decide: equivalence and non-inferiority against
the margin its plan fixed in advance); the explore stage's tables follow, marked exploratory (study.analysis.explore).
Loading is study.analysis.load, writing study.analysis.report. Writes `<study>/report/`: decision.md, decision.json,
decision.csv, explore.csv, trials.csv, PNG figures, renders and a self-contained report.html. Exit 0 only when
decision.md and decision.json were written. See docs/analysis.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from study.analysis.load import AnalysisError, _study_dir, load_study, load_studies  # noqa: F401  (the public loading API)
from study.analysis.report import write_report
from study.base.storage import is_uri


def default_out(paths: list[str]) -> Path:
    """`<study>/report` of a single local input; a combined report or a study behind a URI needs --out."""
    if len(paths) > 1:
        raise AnalysisError("several inputs: give --out DIR for the combined report")
    if is_uri(paths[0]):
        raise AnalysisError(f"{paths[0]}: a study behind a URI is read where it lies; give --out DIR for the report "
                            f"(written on this machine)")
    return _study_dir(paths[0]) / "report"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m study.analyze", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="STUDY", help="study directories, metrics/ folders or parquet files")
    p.add_argument("--margin", type=float, help="replace the margin the confirm plan fixed (the report says so: it "
                                                "is then no longer the planned test)")
    p.add_argument("--out", help="report directory (default <study>/report)")
    p.add_argument("--threshold", type=float, help="validation held-out IoU that counts as converged in the "
                                                   "explore tables (default: 90%% of the lower of the compared modes' "
                                                   "median best, per cell)")
    p.add_argument("--no-renders", action="store_true", help="skip the qualitative panel and turntables")
    return p.parse_args(argv)


def report(inputs: list[str], out: Optional[str | Path] = None, margin: Optional[float] = None,
           threshold: Optional[float] = None, renders: bool = True) -> int:
    """Write the decision report of `inputs` into `out` (default <study>/report) and print where it is. Returns the
    exit status: 0 when decision.md and decision.json were written, 1 when not, 2 on input the analysis refuses.
    The runner calls this at the end of every study."""
    try:
        if margin is not None and not 0 < margin < 1:
            raise AnalysisError(f"--margin {margin}: must be a fraction in (0, 1), e.g. 0.02 for 2%")
        out = Path(out) if out else default_out(inputs)
        d = write_report(inputs, out, margin, threshold, renders=renders)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not ((out / "decision.md").is_file() and (out / "decision.json").is_file()):
        print(f"error: {out}: the report was not written", file=sys.stderr)
        return 1
    print(f"recommendation: {d.recommendation} — {d.reason}\nreport: {out / 'report.html'}  "
          f"table: {out / 'decision.md'}  machine-readable: {out / 'decision.json'}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    a = parse_args(argv)
    return report(a.inputs, a.out, a.margin, a.threshold, renders=not a.no_renders)


if __name__ == "__main__":
    sys.exit(main())
