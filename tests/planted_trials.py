"""A cheap trial function with a planted truth, for studies whose stage logic (not training) is under test: every
trial reports two epochs; the last carries per-test-frame quality where 2d is `effect` relative to 3d, and an epoch
time where 2d is `cost` relative to 3d. Deterministic in (mode, seed), so a resumed study sees the same numbers.

    main([...], planted_confirm(effect=-0.1))            # in-process
    python tests/planted_trials.py EFFECT COST ARGS...   # a driver process (the interrupt tests)
"""

from __future__ import annotations

import sys

import numpy as np

FRAMES = 12  # test frames each trial reports


def planted_confirm(effect: float, cost: float = 0.0):
    """The trial function (study.runner.run.main's trial_fn)."""

    def trial(config, base_config=None, study_uri=None):
        from ray import tune as ray_tune

        mode, seed = config["gaussian_mode"], int(config["seed"])
        rng = np.random.default_rng(seed)
        shared = 1 + rng.normal(0, 0.01) + rng.normal(0, 0.03, FRAMES)  # the seed's luck and each frame's difficulty
        own = np.random.default_rng([seed, mode == "2d"]).normal(0, 0.004, FRAMES)
        factor = (1 + effect if mode == "2d" else 1.0) * (shared + own)
        frames = list(range(100, 100 + FRAMES))
        iou, psnr = 0.8 * factor, 16.5 * factor
        time_s = (1 + cost if mode == "2d" else 1.0) * (1 + np.random.default_rng([seed, 7]).normal(0, 0.01))
        for epoch in (1, 2):
            last = epoch == 2
            ray_tune.report({"epoch": epoch, "valid_heldout_iou": float(iou.mean()) - 0.01 * (2 - epoch),
                             "valid_heldout_psnr": 28.0, "epoch_time_s": float(time_s),
                             **({"test_heldout_iou": float(iou.mean()), "test_heldout_iou_frames": iou.tolist(),
                                 "test_heldout_psnr_fg": float(psnr.mean()),
                                 "test_heldout_psnr_fg_frames": psnr.tolist(), "test_frames": frames} if last else {})})

    return trial


if __name__ == "__main__":  # python tests/planted_trials.py EFFECT COST <study.runner.run arguments>
    from study.runner.run import main

    raise SystemExit(main(sys.argv[3:], planted_confirm(float(sys.argv[1]), float(sys.argv[2]))))
