"""What a study's records say so far, for the runner: the terminal summary, and whether the confirm stage settled
at an interim look (the analysis's own rule, read from the records alone, so a resumed study stops where it did)."""

from __future__ import annotations

from pathlib import Path

from study.analysis.load import AnalysisError
from study.analysis.report import decision_of, read_stages
from study.base.rows import ENDED, RUNNING
from study.base.storage import Store


def stopped_early(study: Store) -> bool:
    """Whether the confirm stage's records settle the decision at an interim look (study.analysis.decide, the analysis's
    own rule: a pure function of the ended trials' records, so a resumed study stops at the same look)."""
    try:
        d, _ = decision_of(read_stages([study.uri]))
    except AnalysisError:  # nothing scored yet
        return False
    return bool((d.design.get("look") or {}).get("stopped_early"))


def summary(study_dir: str | Path, name: str) -> str:
    """Trial counts per stage and the confirm stage's decision with its intervals: the numbers of the report."""
    try:
        stages = read_stages([study_dir])
        d, _ = decision_of(stages)
    except AnalysisError as e:  # e.g. every trial failed before its first epoch
        return f"study {name}: {e}"
    info = next(iter(stages.explore.infos.values()), {}) if stages.explore else {}
    lines = [f"study {name} ({info.get('wall_time_s', float('nan')):.0f} s wall time)"]
    for label, st in (("explore", stages.explore), ("confirm", stages.confirm)):
        if st is not None and len(st.trials) and "status" in st.trials:
            counts = st.trials["status"].value_counts().to_dict()
            lines.append(f"{label} trials: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in
                                                          (*ENDED, RUNNING)))
    lines.append(f"decision: {d.recommendation} — {d.reason}")
    for key, e in d.quality.items():
        lines.append(f"  {key}: {' vs '.join(d.modes)} {e.pct()} over {e.n} pairs x {e.n_frames} test frames")
    if d.cost is not None:
        lines.append(f"  {d.design.get('cost')}: {' vs '.join(d.modes)} {d.cost.pct()} (primary cost)")
    return "\n".join(lines)
