"""The GPU-fraction memory model: fitted from benchmark rows, bigger trials get more of a GPU, never more than one."""

import json

import pytest

from bench.__main__ import fit_memory_model
from study.runner.resources import MemoryModel, gpu_fraction, load_model, oom_resized, peak_mb, refit

PLANTED = MemoryModel(base_mb=300.0, per_kvoxel_mb=2.0, per_kpixel_mb=40.0)


def test_fit_recovers_a_planted_model():
    rows = [{"mode": m, "grid_size": g, "pixels": px,
             "peak_mb": PLANTED.base_mb + PLANTED.per_kvoxel_mb * g**3 / 1000 + PLANTED.per_kpixel_mb * px / 1000}
            for m in ("3d", "2d") for g in (32, 48, 64, 112) for px in (64 * 64, 128 * 128)]
    fitted = fit_memory_model(rows)
    for m in ("3d", "2d"):
        assert fitted[m] == pytest.approx(PLANTED._asdict(), rel=1e-6)
    one_size = fit_memory_model([r for r in rows if r["pixels"] == 64 * 64])  # pixels cannot be told from the base
    assert one_size["3d"]["per_kpixel_mb"] == 0.0
    assert one_size["3d"]["per_kvoxel_mb"] == pytest.approx(2.0)


def test_fraction_grows_with_grid_and_pixels_and_is_bounded():
    model = {"3d": PLANTED}
    # 3d, grid 112 at 288x256: 300 + 2810 + 2949 MB = 6059 MB, x1.5 = 9089 MB
    assert peak_mb("3d", 112, 288 * 256, model) == pytest.approx(300 + 2 * 112**3 / 1000 + 40 * 288 * 256 / 1000)
    assert gpu_fraction("3d", 32, 12_000, 64 * 64, model) == 0.125  # 1.5 x 529 MB = 6.6%: the cap of 8 per GPU
    assert gpu_fraction("3d", 32, 12_000, 64 * 64, model, max_per_gpu=20) == 0.1  # next 1/20 above 6.6%
    assert gpu_fraction("3d", 112, 12_000, 288 * 256, model) == 0.8  # 9.1 GB of 12 GB = 75.7%
    assert gpu_fraction("3d", 112, 40_000, 288 * 256, model) == 0.25  # 22.7%
    assert gpu_fraction("3d", 112, 24_000, 288 * 256, model) == 0.4  # 37.9%: two per GPU (a quarter step gave 0.5)
    assert gpu_fraction("3d", 112, 4_000, 288 * 256, model) == 1.0  # never more than one GPU
    fractions = [gpu_fraction("3d", g, 16_000, 288 * 256, model) for g in (32, 48, 64, 112)]
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1]


def test_shipped_model_is_read_and_complete(tmp_path):
    shipped = load_model()
    assert set(shipped) == {"3d", "2d", "2d_screen"}
    assert all(m.base_mb >= 0 and m.per_kvoxel_mb > 0 for m in shipped.values())
    path = tmp_path / "memory_model.json"
    path.write_text(json.dumps({"modes": {"3d": {"base_mb": 1.0, "per_kvoxel_mb": 2.0}}}))  # older file: no pixels
    assert load_model(path) == {"3d": MemoryModel(1.0, 2.0, 0.0)}


def test_oom_resize_doubles_up_to_one_gpu():
    assert [oom_resized(f) for f in (0.125, 0.3, 0.6, 1.0)] == [0.25, 0.6, 1.0, None]


def test_refit_from_study_peaks_reproduces_planted_coefficients():
    """Peaks a study measured (one image size, several grids, noise-free) give back the planted base and per-voxel
    coefficients; the pixel coefficient, which one image size cannot identify, is kept from the prior."""
    import numpy as np
    import pandas as pd

    px = 144 * 128
    rng = np.random.default_rng(0)
    rows = pd.DataFrame([{"gaussian_mode": m, "grid_size": g, "peak_mb": PLANTED.base_mb + PLANTED.per_kvoxel_mb
                          * g**3 / 1000 + PLANTED.per_kpixel_mb * px / 1000, "pixels": px}
                         for m in ("3d", "2d") for g in rng.permutation([32, 48, 64, 112]) for _ in range(3)])
    prior = {"3d": MemoryModel(1.0, 1.0, 40.0), "2d": MemoryModel(1.0, 1.0, 40.0), "2d_screen": MemoryModel(5, 5, 5)}
    fitted = refit(rows, prior=prior)
    for m in ("3d", "2d"):
        assert fitted[m]._asdict() == pytest.approx(PLANTED._asdict(), rel=1e-6)
    assert fitted["2d_screen"] == prior["2d_screen"]  # no rows: unchanged
    varied = pd.concat([rows, rows.assign(pixels=4 * px, peak_mb=rows.peak_mb + PLANTED.per_kpixel_mb * 3 * px
                                           / 1000)])
    assert refit(varied, prior={**prior, "3d": MemoryModel(0, 0, 0)})["3d"]._asdict() == pytest.approx(
        PLANTED._asdict(), rel=1e-6)  # pixels that vary identify their own coefficient


def test_refit_command_reads_a_study(tmp_path, small_dataset, capsys):
    """`python -m study.resources STUDY` on a study's parquet: the GPU peaks are used (not CPU ones), the table
    printed, the model file left alone without --write."""
    import shutil

    from study.runner.resources import MODEL_FILE, main
    from study.base.storage import Store

    study = Store(tmp_path / "s")
    for i, (m, g) in enumerate((m, g) for m in ("3d", "2d") for g in (32, 48, 64)):
        for epoch, kind, extra in ((1, "cuda_max_allocated", 0.0), (2, "cuda_max_allocated", -5.0)):
            peak = PLANTED.base_mb + PLANTED.per_kvoxel_mb * g**3 / 1000 + PLANTED.per_kpixel_mb * 1024 / 1000 + extra
            study.write_table([{"trial_id": f"t{i}", "epoch": epoch, "gaussian_mode": m, "grid_size": g,
                                "valid_heldout_iou": 0.5, "cuda_peak_allocated_mb": peak, "mem_kind": kind}],
                              "metrics", f"part-t{i}-{epoch:04d}.parquet")
    study.write_table([{"trial_id": "cpu", "epoch": 1, "gaussian_mode": "3d", "grid_size": 32, "valid_heldout_iou": 0.5,
                        "cpu_peak_rss_growth_mb": 1e6, "mem_kind": "cpu_rss_delta"}], "metrics", "part-cpu-0001.parquet")
    before = MODEL_FILE.read_bytes()
    assert main([str(tmp_path / "s"), "--pixels", "1024"]) == 0
    out = capsys.readouterr().out
    assert "refitted from 6 trials" in out and "cuda_max_allocated peaks" in out, out
    prior = load_model()["3d"]  # one image size: the base takes the planted pixel term beyond the prior's
    base = PLANTED.base_mb + (PLANTED.per_kpixel_mb - prior.per_kpixel_mb) * 1.024
    assert f"3d: base {prior.base_mb:.1f} -> {base:.1f} MB, per kvoxel {prior.per_kvoxel_mb:.4f} -> 2.0000 MB" in out
    assert MODEL_FILE.read_bytes() == before
    assert main([str(tmp_path / "nothing")]) == 2
