"""study: the Ray Tune study comparing 2D and 3D Gaussian splatting for posesplat.

Three packages, imports pointing one way (docs/architecture.md; import-linter checks it): `study.base` (storage, the
space, the study's records) < `study.analysis` (reads a study and decides; no Ray) < `study.runner` (runs it with
Ray Tune). `python -m study.run`, `study.analyze`, `study.simulate` and `study.resources` forward to them.
"""

from study import _moved

_moved.install()
