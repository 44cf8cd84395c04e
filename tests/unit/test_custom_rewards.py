"""User rewards: file/module references from YAML, callables of both shapes, through the reward worker."""

import math
import sys
import textwrap

import pytest
import yaml

from reinforced.config import ConfigError, RewardTerm, load_config
from reinforced.rewards import RewardComposer
from reinforced.rewards.custom import register_callable
from reinforced.types import Completion, Prompt, RolloutGroup

REWARD_FILE = '''
def exact_units(completions, prompts, answer, unit, **columns):
    return [float(c.strip().endswith(f"{a} {u}")) for c, a, u in zip(completions, answer, unit)]

def per_sample(completion, prompt, bonus=1.0):
    return bonus if prompt.answer in completion else None

def wrong_shape(text):
    return 1.0

def short_batch(completions, **columns):
    return [1.0]
'''


def group(texts, answer="12", unit="km", prompt_id="q"):
    prompt = Prompt(prompt_id, "How far?", answer=answer, metadata={"unit": unit})
    return RolloutGroup(prompt, tuple(Completion(t, (1,), (0.0,), "stop") for t in texts))


def write_config(folder, terms):
    (folder / "my_rewards.py").write_text(REWARD_FILE)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({"rewards": {"terms": terms}}))
    return path


def test_file_reward_from_yaml_resolves_beside_the_config_and_scores_in_the_worker(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    path = write_config(tmp_path / "cfg", [{"name": "my_rewards.py:exact_units", "accuracy": True},
                                          {"name": "my_rewards.py:per_sample", "params": {"bonus": 0.5}}])
    monkeypatch.chdir(tmp_path)  # not the config's folder: the path is relative to the config file
    cfg = load_config(path)
    assert cfg.rewards.terms[0].name == f"{(tmp_path / 'cfg' / 'my_rewards.py').resolve()}:exact_units"
    with RewardComposer(cfg.rewards.terms, timeout_s=30.0) as comp:
        [g], stats = comp.score([group(["it is 12 km", "12 miles", "no idea"])])
    assert g.accuracy == (1.0, 0.0, 0.0)
    assert g.rewards == (1.5, 0.5, 0.0)  # per_sample: None (answer absent) is "does not apply", not an error
    assert stats["reward/errors"] == 0.0


def test_file_reward_relative_to_the_working_directory_on_the_command_line(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(REWARD_FILE)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["rewards.terms=[{name: my_rewards.py:exact_units, accuracy: true}]"])
    assert cfg.rewards.terms[0].name.startswith(str(tmp_path.resolve()))


def test_module_reference(tmp_path, monkeypatch):
    (tmp_path / "user_reward_mod.py").write_text(REWARD_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(None, ["rewards.terms=[{name: 'user_reward_mod:exact_units', accuracy: true}]"])
    with RewardComposer(cfg.rewards.terms, timeout_s=30.0) as comp:  # the worker never had tmp_path on sys.path
        [g], stats = comp.score([group(["12 km", "13 km"])])
    assert g.rewards == (1.0, 0.0) and stats["reward/errors"] == 0.0
    sys.modules.pop("user_reward_mod", None)


@pytest.mark.parametrize(("name", "message"), [
    ("missing.py:exact_units", "reward file not found: missing.py"),
    ("my_rewards.py:exact_unit", "has no function 'exact_unit'; did you mean 'exact_units'?"),
    ("my_rewards.py:wrong_shape", "has the signature wrong_shape(text); a reward is one of"),
    ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
])
def test_bad_references_are_load_time_errors_naming_the_term(tmp_path, name, message):
    path = write_config(tmp_path, [{"name": name, "accuracy": True}])
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "rewards.terms.0.name" in str(err.value) and message in str(err.value)


def test_a_file_that_fails_to_import_is_named(tmp_path):
    (tmp_path / "broken.py").write_text("import no_such_dependency_xyz\n")
    with pytest.raises(ConfigError, match=r"broken.py failed to import: ModuleNotFoundError"):
        load_config(None, [f"rewards.terms=[{{name: {tmp_path}/broken.py:f, accuracy: true}}]"])


def test_unknown_param_of_a_file_reward_is_an_error(tmp_path):
    path = write_config(tmp_path, [{"name": "my_rewards.py:per_sample", "accuracy": True, "params": {"bonnus": 1}}])
    with pytest.raises(ConfigError, match="has no parameter 'bonnus'; did you mean 'bonus'"):
        load_config(path)


def test_a_batch_reward_with_the_wrong_number_of_scores_fails_its_samples(tmp_path):
    path = write_config(tmp_path, [{"name": "my_rewards.py:exact_units", "accuracy": True},
                                   {"name": "my_rewards.py:short_batch"}])
    with RewardComposer(load_config(path).rewards.terms, timeout_s=30.0) as comp:
        [g], stats = comp.score([group(["12 km", "1 km"])])
    assert all(math.isnan(r) for r in g.rewards) and stats["reward/errors"] == 2.0


def test_callables_of_both_shapes_run_in_the_worker_beside_builtins():
    def ends_with_answer(completions, prompts, answer, **columns):
        assert prompts == ["How far?"] * len(completions)
        return [float(c.endswith(a)) for c, a in zip(completions, answer, strict=True)]

    def penalty(completion, prompt):
        return -0.25 if "no" in completion else 0.0

    register_callable(ends_with_answer)
    register_callable(penalty)
    terms = [{"name": "ends_with_answer", "accuracy": True}, {"name": "penalty"},
             {"name": "format", "weight": 0.5}]
    with RewardComposer(terms, timeout_s=30.0) as comp:
        [g], stats = comp.score([group(["<think>x</think><answer>12</answer>", "no 12", "13"])])
    assert g.rewards == (0.5, 0.75, 0.0)  # "...</answer>" does not end with 12; format gives 0.5 x 1
    assert stats["reward/errors"] == 0.0


def test_a_builtin_name_cannot_be_taken_and_lambdas_need_names():
    def format(completion, prompt):  # noqa: A001
        return 1.0

    with pytest.raises(ValueError, match="taken by a built-in reward"):
        register_callable(format)
    with pytest.raises(ValueError, match="needs a name"):
        register_callable(lambda completion, prompt: 1.0)


def test_reward_file_runs_in_the_worker_without_being_reimported_per_batch(tmp_path):
    marker = tmp_path / "imports.txt"
    (tmp_path / "counting.py").write_text(textwrap.dedent(f"""
        with open({str(marker)!r}, "a") as f:
            f.write("x")
        def reward(completions, **columns):
            return [1.0] * len(completions)
    """))
    cfg = load_config(None, [f"rewards.terms=[{{name: {tmp_path}/counting.py:reward, accuracy: true}}]"])
    with RewardComposer(cfg.rewards.terms, timeout_s=30.0) as comp:
        for _ in range(2):
            [g], _stats = comp.score([group(["a", "b"])])
            assert g.rewards == (1.0, 1.0)
    assert marker.read_text() == "x"  # imported once, in this process; the worker got the function by value


def test_a_batch_reward_gets_its_declared_context_params_as_lists_in_one_call():
    """num_tokens / truncated / correct / group_* reach a batch reward as one list entry per completion (in the
    batch's order), in one call; a reward with only **columns is not sent them; a param of that name is refused."""
    calls = []

    def ctx_exact(completions, answer):
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]

    def ctx_lists(completions, num_tokens, truncated, correct, group_num_tokens, group_correct):
        calls.append((num_tokens, truncated, correct, group_num_tokens, group_correct))
        return [n + 10 * c for n, c in zip(num_tokens, correct, strict=True)]

    def ctx_open(completions, **columns):
        calls.append(sorted(columns))
        return [0.0] * len(completions)

    for fn in (ctx_exact, ctx_lists, ctx_open):
        register_callable(fn)
    groups = [RolloutGroup(Prompt("a", "q?", answer="12"), (Completion("12", (1, 2, 3), (0.0,) * 3, "stop"),
                                                            Completion("x", (1, 2), (0.0,) * 2, "stop"))),
              RolloutGroup(Prompt("b", "q?", answer="7"), (Completion("7", (1,), (0.0,), "length"),
                                                           Completion("no", (1, 2), (0.0,) * 2, "stop")))]
    terms = [{"name": "ctx_exact", "accuracy": True}, {"name": "ctx_lists"}, {"name": "ctx_open"}]
    with RewardComposer(terms, use_worker=False) as comp:
        scored, stats = comp.score(groups)
    assert calls[0] == ["answer", "answer_type", "choices", "prompt_id", "prompts", "task"]  # no context params
    assert calls[1] == ([3, 2, 1, 2], [False, False, True, False], [1.0, 0.0, 1.0, 0.0],
                        [(3, 2), (3, 2), (1, 2), (1, 2)], [(1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (1.0, 0.0)])
    assert len(calls) == 2  # the context reward ran once, after the accuracy term
    assert [g.components["ctx_lists"] for g in scored] == [(13.0, 2.0), (11.0, 2.0)]
    assert [g.rewards for g in scored] == [(14.0, 2.0), (12.0, 2.0)] and stats["reward/errors"] == 0.0
    with pytest.raises(ValueError, match="'num_tokens' is filled from the rollout"):
        RewardComposer([{"name": "ctx_lists", "accuracy": True, "params": {"num_tokens": 3}}], use_worker=False)


def test_only_accuracy_rewards_that_can_read_gold_need_it(tmp_path):
    """A batch reward declaring its columns without `answer` scores rows without gold; one taking `answer` or
    **columns, a per-sample reward or a built-in verifier needs gold in every row (a load-time error)."""
    from reinforced.data import build_sampler
    from reinforced.data.checks import check_gold
    from reinforced.rewards.custom import reads_gold

    def no_gold(completions, prompts):
        return [1.0] * len(completions)

    def with_gold(completions, answer):
        return [1.0] * len(completions)

    def open_columns(completions, **columns):
        return [1.0] * len(completions)

    def sample(completion, prompt):
        return 1.0

    for fn in (no_gold, with_gold, open_columns, sample):
        register_callable(fn)
    assert [reads_gold(n) for n in ("no_gold", "with_gold", "open_columns", "sample", "math_answer")] == [
        False, True, True, True, True]
    (tmp_path / "rows.jsonl").write_text('{"question": "say hi"}\n{"question": "say ho", "answer": "ho"}\n')
    cfg = load_config(None, [f"data.train=[{{path: {tmp_path / 'rows.jsonl'}}}]"])
    sources = build_sampler(cfg.data, 0).sources
    check_gold(sources, [RewardTerm(name="no_gold", accuracy=True), RewardTerm(name="sample")], {})
    for name in ("with_gold", "open_columns", "sample", "math_answer"):
        with pytest.raises(ValueError, match=rf"1 row\(s\) have no gold answer.*rows.jsonl:1: .*scored by {name}"):
            check_gold(sources, [RewardTerm(name=name, accuracy=True)], {})
