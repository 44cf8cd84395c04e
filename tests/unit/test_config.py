"""Config: YAML + dotted overrides, errors that name the key, the value and the valid choices."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from reinforced.config import ConfigError, apply_override, load_config


def write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_defaults_load_and_are_frozen():
    cfg = load_config(None)
    assert cfg.rollout.group_size == 8
    with pytest.raises(ValidationError, match="frozen"):
        cfg.rollout.group_size = 4  # type: ignore[misc]


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, {"training": {"lr": 1e-5}, "rollout": {"group_size": 4}})
    cfg = load_config(path, ["training.lr=3e-6", "rollout.stop=[</answer>]", "run.name=x"])
    assert cfg.training.lr == 3e-6
    assert cfg.rollout.group_size == 4
    assert cfg.rollout.stop == ("</answer>",)
    assert cfg.run.name == "x"


def test_algorithm_overrides_are_dotted():
    tree: dict = {}
    apply_override(tree, "algorithm.clip.eps_high", 0.28)
    apply_override(tree, "algorithm.preset", "dapo")
    assert tree == {"algorithm": {"overrides": {"clip.eps_high": 0.28}, "preset": "dapo"}}


def test_unknown_key_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'training.learning_rat'.*valid keys here: .*lr"):
        load_config(None, ["training.learning_rat=1e-6"])
    with pytest.raises(ConfigError, match=r"did you mean 'group_size'"):
        load_config(write(tmp_path, {"rollout": {"group_sise": 4}}))


def test_bad_value_names_key_and_choices():
    with pytest.raises(ConfigError, match=r"training.lr_schedule.*'cosin'.*constant.*cosine.*linear"):
        load_config(None, ["training.lr_schedule=cosin"])
    with pytest.raises(ConfigError, match=r"rollout.group_size.*0"):
        load_config(None, ["rollout.group_size=0"])


def test_data_source_needs_path_or_task():
    with pytest.raises(ConfigError, match="exactly one of 'path' or 'task'"):
        load_config(None, ["data.train=[{weight: 1.0}]"])


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["training.max_steps=3"])
    again = load_config(write(tmp_path, yaml.safe_load(cfg.to_yaml())))
    assert again == cfg


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["training.lr"])


def test_override_inside_a_list(tmp_path):
    path = write(tmp_path, {"eval": {"sets": [{"task": "arithmetic", "limit": 100}]}})
    cfg = load_config(path, ["eval.sets.0.limit=20"])
    assert cfg.eval.sets[0].limit == 20
    with pytest.raises(ConfigError, match="index '3'"):
        load_config(path, ["eval.sets.3.limit=20"])


@pytest.mark.parametrize("preset", ["grpo", "dr_grpo", "rloo", "dapo"])
def test_group_relative_advantage_needs_two_samples(preset):
    # With G=1 a group-relative baseline equals the reward itself: every advantage is 0, nothing is learned.
    with pytest.raises(ConfigError, match=r"rollout.group_size=1 .*advantage '\w+' .*group"):
        load_config(None, [f"algorithm.preset={preset}", "rollout.group_size=1"])


def test_group_size_one_is_fine_without_a_group_baseline():
    # REINFORCE++ whitens over the batch and PPO uses a critic: one sample per prompt still learns.
    assert load_config(None, ["algorithm.preset=reinforce_pp", "rollout.group_size=1"]).rollout.group_size == 1
    assert load_config(None, ["algorithm.preset=ppo", "rollout.group_size=1"]).rollout.group_size == 1


def test_yaml_syntax_error_is_one_line_naming_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  lr: 1e-6\n  max_steps: [3\nrollout:\n  group_size: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:3:") or message.startswith(f"{path}:4:"), message
