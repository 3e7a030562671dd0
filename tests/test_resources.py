"""The GPU-fraction memory model: fitted from benchmark rows, bigger trials get more of a GPU, never more than one."""

import json

import pytest

from bench.__main__ import fit_memory_model
from study.resources import MemoryModel, gpu_fraction, load_model, peak_mb

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
    assert gpu_fraction("3d", 32, 12_000, 64 * 64, model) == 0.25  # 1.5 x 626 MB: a quarter is plenty
    assert gpu_fraction("3d", 112, 12_000, 288 * 256, model) == 1.0  # 9.1 GB: it gets the whole 12 GB GPU
    assert gpu_fraction("3d", 112, 40_000, 288 * 256, model) == 0.25  # 9.1 GB of 40 GB
    assert gpu_fraction("3d", 112, 24_000, 288 * 256, model) == 0.5  # 9.1 GB of 24 GB: two per GPU, not four
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
