"""The GPU-fraction memory model gives bigger trials more of a GPU and never more than one."""

from study.resources import gpu_fraction, peak_mb


def test_fraction_grows_with_grid_and_is_bounded():
    assert peak_mb("3d", 112) > peak_mb("3d", 64) > peak_mb("3d", 32)
    small, big = gpu_fraction("3d", 32, 12_000), gpu_fraction("3d", 112, 12_000)
    assert 0.25 <= small <= big <= 1.0
    assert gpu_fraction("3d", 112, peak_mb("3d", 112)) == 1.0  # a GPU just big enough: the trial gets all of it
    assert gpu_fraction("3d", 16, 100 * peak_mb("3d", 16)) == 0.25  # a small trial on a big GPU: a quarter
    assert (gpu_fraction("2d", 48, 80_000) * 4).is_integer()
