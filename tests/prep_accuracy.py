"""Accuracy of `posesplat.prep` on Pose Splatter-layout recordings (tests/recording.py), for docs/prep.md.

`python tests/prep_accuracy.py` imports 4 seeds x (config ell | ell derived) of 60 frames, 4 cameras, 96x80,
millimetre calibration tilted 25 degrees, lossy masks, frame_jump 2, image_downsample 2, and prints per import: the
angle between the true and the found up, centre and heading errors against the truth, the cube side against the one
the truth needs, the smallest share of the true body inside the cube over frames, and the import's wall time.
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from posesplat.data import open_dataset
from posesplat.prep import prep

sys.path.insert(0, str(Path(__file__).parent))
from recording import angle_deg, cube_share, make_recording, to_dataset, yaw_in_dataset  # noqa: E402


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="prep-accuracy-"))
    for seed in range(4):
        for name, kw in (("ell", {}), ("derived", {"ell": None, "ell_tracking": None})):
            rec = make_recording(root / f"{name}{seed}", frames=60, frame_jump=2, image_downsample=2, seed=seed,
                                 extra_keys={"unit_m": 0.001, **kw})
            t = time.time()
            ds = open_dataset(prep(rec.config, workers=2, progress=False, log=lambda s: None))
            dt = time.time() - t
            src = np.arange(ds.n_frames) * 2
            e = 1000 * np.linalg.norm(ds.centre - to_dataset(ds, rec, rec.centre[src]), axis=1)
            h = angle_deg(ds.heading, yaw_in_dataset(ds, rec, rec.heading[src]))
            A = np.asarray(ds.attrs["world_from_calibration"])[:3, :3] @ rec.calib_from_world[:3, :3]
            tilt = np.degrees(np.arccos(min(1, A[2, 2])))
            share = min(cube_share(ds, rec, j, 2 * j) for j in range(ds.n_frames))
            print(f"seed {seed} {name:8s} up {tilt:.2f} deg, centre median {np.median(e):.1f} max {e.max():.1f} mm, "
                  f"heading median {np.median(h):.1f} max {h.max():.1f} deg, ell {ds.ell:.3f} m (true need {rec.ell_m:.3f}), "
                  f"cube holds min {share:.3f}, {dt:.1f} s")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
