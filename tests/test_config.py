"""Config schema: shipped configs validate; bad keys and values give one line naming the key."""

import json
from pathlib import Path

import pytest

from posesplat.config import Config, ConfigError, load_config, make_config, schema_table

ROOT = Path(__file__).parents[1]
CONFIGS = sorted(ROOT.joinpath("configs").glob("*.json"))


def test_shipped_configs_validate():
    assert len(CONFIGS) >= 6
    for path in CONFIGS:
        cfg = load_config(path)
        assert cfg.gaussian_mode in ("3d", "2d", "2d_screen")
    debug = load_config("configs/2d_3d_comparison_3d_debug.json")
    assert (debug.grid_size, debug.max_frames, debug.epochs) == (48, 30, 10)
    short = load_config("configs/2d_3d_comparison_2d_short.json")
    assert (short.grid_size, short.max_frames, short.epochs) == (48, 100, 50)
    assert load_config("configs/2d_3d_comparison_3d_paper.json").grid_size == 112


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'grid_sise' \(did you mean 'grid_size'\?\)"):
        make_config({"grid_sise": 32})


@pytest.mark.parametrize(
    "values, key",
    [
        ({"grid_size": "big"}, "grid_size"),
        ({"grid_size": 4}, "grid_size"),
        ({"lr": -1.0}, "lr"),
        ({"gaussian_mode": "4d"}, "gaussian_mode"),
        ({"image_downsample": 0}, "image_downsample"),
    ],
)
def test_bad_values_name_the_key(values, key):
    with pytest.raises(ConfigError) as err:
        make_config(values, "my.json")
    msg = str(err.value)
    assert msg.startswith("my.json: key '" + key + "'") and "\n" not in msg


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="min_n"):
        make_config({"min_n": 10, "max_n": 5})
    with pytest.raises(ConfigError, match="volume_idx"):
        make_config({"grid_size": 16, "volume_idx": [[0, 20], [0, 16], [0, 16]]})


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_config(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"grid_size": 32}))
    assert load_config(good, {"lr": 0.01}).lr == 0.01


def test_training_doc_lists_every_key():
    """docs/training.md holds the generated schema table verbatim, so it names every key with its current default."""
    doc = (ROOT / "docs" / "training.md").read_text()
    assert [k for k in Config.model_fields if f"| `{k}` |" not in doc] == []
    assert schema_table() in doc, "docs/training.md: paste the output of `python -m posesplat.config`"
    assert "| `seed` | int | `0` |" in schema_table() and "| `grid_size` | int | `48` | >= 8, <= 256 |" in schema_table()


def test_removed_key_is_unknown():
    """num_workers was never used by train() and is gone: a config that sets it is refused, not silently ignored."""
    with pytest.raises(ConfigError, match="unknown key 'num_workers'"):
        make_config({"num_workers": 2})


def test_every_config_reader_says_the_same_line_for_the_same_fault(tmp_path):
    """A training config, a search space and a prep config that do not parse, or hold a bad value, are refused in
    one line of one form (posesplat.messages): the file, the JSON line; the key, the problem and the value."""
    from posesplat.prep.config import load_prep_config
    from posesplat.prep.errors import PrepError
    from study.base.space import SpaceError, load_space

    bad = tmp_path / "bad.json"
    bad.write_text('{"grid_size": 32,\n  oops}')
    for load, error in ((load_config, ConfigError), (load_space, SpaceError), (load_prep_config, PrepError)):
        with pytest.raises(error) as e:
            load(bad)
        assert str(e.value).startswith(f"{bad}: not valid JSON (line 2: "), str(e.value)
    with pytest.raises(ConfigError) as e:
        make_config({"grid_size": 3}, "x.json")
    assert str(e.value) == "x.json: key 'grid_size': Input should be greater than or equal to 8 (got 3)"
    space = json.loads((ROOT / "search_spaces" / "smoke.json").read_text())
    (tmp_path / "s.json").write_text(json.dumps({**space, "max_epochs": "many"}))
    with pytest.raises(SpaceError, match=r"s.json: key 'max_epochs': Input should be a valid integer.* \(got 'many'\)"):
        load_space(str(tmp_path / "s.json"))
