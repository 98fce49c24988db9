"""``fill_added_fields``: the one ``upgrade`` every trainer whose config only grew uses (old runs resume)."""

import pytest

from innerloop.runs import Run, fill_added_fields


def test_missing_fields_read_as_their_old_values_and_saved_ones_are_kept():
    upgrade = fill_added_fields({"layers": 1, "train_layers": []})
    assert upgrade({"lr": 0.1}) == {"layers": 1, "train_layers": [], "lr": 0.1}
    assert upgrade({"lr": 0.1, "layers": 3}) == {"layers": 3, "train_layers": [], "lr": 0.1}


def test_upgraded_configs_never_share_a_mutable_value():
    old = {"train_layers": []}
    upgrade = fill_added_fields(old)
    a = upgrade({})
    a["train_layers"].append(2)
    assert upgrade({})["train_layers"] == [] and old == {"train_layers": []}
    old["train_layers"].append(5)  # the caller's dict changing later does not change the upgrade either
    assert upgrade({})["train_layers"] == []


def test_a_run_resumes_a_config_saved_before_a_field_existed(tmp_path):
    upgrade = fill_added_fields({"new_flag": False})
    Run(tmp_path, {"steps": 3, "lr": 0.1}).check_config({"steps": 3, "lr": 0.1}, tmp_path)
    Run(tmp_path, {"steps": 3, "lr": 0.1, "new_flag": False}, upgrade=upgrade).check_config(
        {"steps": 3, "lr": 0.1}, tmp_path)
    with pytest.raises(ValueError, match="new_flag"):  # the old run did not do what new_flag=True does
        Run(tmp_path, {"steps": 3, "lr": 0.1, "new_flag": True}, upgrade=upgrade).check_config(
            {"steps": 3, "lr": 0.1}, tmp_path)
