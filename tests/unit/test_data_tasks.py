"""Procedural text tasks: answers checked by independent solvers, determinism, difficulty, question forms."""

from __future__ import annotations

import ast
import itertools
import operator
import random
import re
from fractions import Fraction

import pytest

from reinforced.data.tasks import FORMS, TASKS
from reinforced.data.tasks.base import reward_set_name
from reinforced.data.tasks.text import SEQUENCE_LABELS

OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def eval_expr(text: str) -> tuple[Fraction, list[int]]:
    """Exact value of an arithmetic expression and the integer literals it uses (an AST walk, no eval)."""
    used: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            used.append(node.value)
            return Fraction(node.value)
        raise ValueError(f"unexpected node {ast.dump(node)}")

    return walk(ast.parse(text, mode="eval").body), used


def solvable(numbers: list[int], target: int) -> bool:
    """Brute-force Countdown: can the numbers (each once) make the target with + - * /?"""
    def search(values: tuple[Fraction, ...]) -> bool:
        if len(values) == 1:
            return values[0] == target
        for i, j in itertools.permutations(range(len(values)), 2):
            rest = tuple(v for k, v in enumerate(values) if k not in (i, j))
            a, b = values[i], values[j]
            results = [a + b, a - b, a * b] + ([a / b] if b != 0 else [])
            if any(search((*rest, r)) for r in results):
                return True
        return False

    return search(tuple(Fraction(n) for n in numbers))


def solve_word_problem(text: str) -> int:
    """Read the story sentence by sentence with its own patterns and track the quantity."""
    count = 0
    for sentence in re.split(r"(?<=[.?])\s+", text):
        if m := re.fullmatch(r"\w+ has (\d+) \w+\.", sentence):
            count = int(m[1])
        elif m := re.fullmatch(r"\w+ gives \w+ (\d+) more \w+\.", sentence):
            count += int(m[1])
        elif m := re.fullmatch(r"\w+ gives (\d+) \w+ to \w+\.", sentence):
            count -= int(m[1])
        elif m := re.fullmatch(r"\w+ buys (\d+) packs with (\d+) \w+ in each pack\.", sentence):
            count += int(m[1]) * int(m[2])
        elif m := re.fullmatch(r"\w+ splits the \w+ equally among (\d+) boxes and keeps just one box\.", sentence):
            assert count % int(m[1]) == 0
            count //= int(m[1])
        elif re.fullmatch(r"\w+'s collection doubles\.", sentence):
            count *= 2
        else:
            assert sentence.startswith("How many"), sentence
    return count


def classify(seq: list[int]) -> set[str]:
    labels = set()
    if len({b - a for a, b in itertools.pairwise(seq)}) == 1:
        labels.add("arithmetic")
    if all(a != 0 for a in seq) and len({Fraction(b, a) for a, b in itertools.pairwise(seq)}) == 1:
        labels.add("geometric")
    if all(seq[i] == seq[i - 1] + seq[i - 2] for i in range(2, len(seq))):
        labels.add("fibonacci")
    roots = [round(abs(x) ** 0.5) for x in seq]
    if all(r * r == x for r, x in zip(roots, seq, strict=True)) and all(b == a + 1 for a, b in itertools.pairwise(roots)):
        labels.add("squares")
    return labels


def samples(task: str, n: int = 40, **params: object) -> list:
    return [TASKS[task].sample(random.Random(f"t{i}"), **params) for i in range(n)]


@pytest.mark.parametrize("difficulty", [0.0, 0.3, 0.7, 1.0])
def test_arithmetic_answers_match_an_independent_evaluator(difficulty: float) -> None:
    for p in samples("arithmetic", difficulty=difficulty):
        expr = p.question.removeprefix("What is ").removesuffix("?")
        value, _ = eval_expr(expr)
        assert p.answer == str(value) and p.answer_type == "number"


def test_arithmetic_difficulty_knob() -> None:
    easy = samples("arithmetic", difficulty=0.0)
    default = samples("arithmetic")
    hard = samples("arithmetic", difficulty=1.0)
    assert all(max(eval_expr(p.metadata["expression"])[1]) < 10 for p in easy)
    assert all(len(p.metadata["numbers"]) == 2 and all(10 <= x < 100 for x in p.metadata["numbers"]) for p in default)
    assert all(len(p.metadata["numbers"]) == 4 and all(x >= 1000 for x in p.metadata["numbers"]) for p in hard)
    mul = samples("arithmetic", ops="*", digits=2, operands=3)
    assert all(int(p.answer) == eval_expr(p.metadata["expression"])[0] for p in mul)
    with pytest.raises(ValueError, match="difficulty must lie in"):
        TASKS["arithmetic"].sample(random.Random(0), difficulty=1.5)


@pytest.mark.parametrize("difficulty", [0.0, 0.5, 1.0])
def test_word_problem_answers_match_a_text_solver(difficulty: float) -> None:
    probs = samples("word_problem", difficulty=difficulty)
    for p in probs:
        assert solve_word_problem(p.question) == int(p.answer) >= 0
    assert {len(p.metadata["steps"]) for p in probs} == {1 + min(4, int(difficulty * 5))}


@pytest.mark.parametrize("difficulty", [0.0, 0.4])
def test_countdown_targets_are_reachable_and_reference_is_valid(difficulty: float) -> None:
    for p in samples("countdown", n=15, difficulty=difficulty):
        numbers, target = p.metadata["numbers"], p.metadata["target"]
        value, used = eval_expr(p.metadata["reference_solution"])
        assert value == target == int(p.answer) and sorted(used) == sorted(numbers)
        assert f"[{', '.join(map(str, numbers))}]" in p.question
        assert solvable(numbers, target)
        assert len(numbers) == 3 + int(difficulty * 4)


def test_sequence_type_labels_are_unique_and_correct() -> None:
    probs = samples("sequence_type", n=80, difficulty=1.0)
    for p in probs:
        assert classify(p.metadata["sequence"]) == {p.answer}
    assert {p.answer for p in probs} == set(SEQUENCE_LABELS)


@pytest.mark.parametrize("name", ["arithmetic", "word_problem", "countdown", "sequence_type"])
def test_same_seed_same_prompt(name: str) -> None:
    a = TASKS[name].sample(random.Random(7), difficulty=0.5)
    b = TASKS[name].sample(random.Random(7), difficulty=0.5)
    assert a == b and a.task == name and a.reward_set == name


@pytest.mark.parametrize("name", ["arithmetic", "word_problem", "countdown", "sequence_type"])
def test_question_forms(name: str) -> None:
    task = TASKS[name]
    for i in range(20):
        open_p = task.sample(random.Random(i))
        choice = task.sample(random.Random(i), form="choice")
        yes_no = task.sample(random.Random(i), form="yes_no")
        gold = str(open_p.metadata.get("form_answer", open_p.answer))
        assert choice.answer_type == "choice" and len(set(choice.choices)) == 4
        assert choice.choices["ABCD".index(choice.answer)] == gold
        assert choice.metadata["open_answer"] == open_p.answer and choice.reward_set == f"{name}:choice"
        assert yes_no.answer in ("yes", "no") and yes_no.reward_set == f"{name}:yes_no"
        assert (yes_no.metadata["proposed"] == gold) == (yes_no.answer == "yes")
        if name == "countdown" and yes_no.answer == "no":
            assert eval_expr(yes_no.metadata["proposed"])[0] != open_p.metadata["target"]
    assert {task.sample(random.Random(i), form="yes_no").answer for i in range(20)} == {"yes", "no"}
    sets = task.reward_sets()
    assert set(sets) == {reward_set_name(name, f) for f in FORMS}
    assert sets[f"{name}:choice"][0]["name"] == "choice" and sets[f"{name}:yes_no"][0]["name"] == "yes_no"
    assert any(t.get("accuracy") for t in sets[name])
    with pytest.raises(ValueError, match="unknown question form 'multi' .*valid: open, choice, yes_no"):
        task.sample(random.Random(0), form="multi")


@pytest.mark.parametrize("name", ["arithmetic", "word_problem", "countdown", "sequence_type"])
@pytest.mark.parametrize("form", FORMS)
def test_declared_reward_accepts_gold_and_rejects_a_distractor(name: str, form: str) -> None:
    from reinforced.rewards import REWARDS

    for i in range(5):
        p = TASKS[name].sample(random.Random(i), form=form)
        (term,) = [t for t in TASKS[name].reward_terms_for(form) if t.get("accuracy")]
        gold = p.metadata["reference_solution"] if form == "open" and name == "countdown" else p.answer
        wrong = {"choice": next(c for c in "ABCD" if c != p.answer), "yes_no": "no" if p.answer == "yes" else "yes"}
        bad = wrong.get(form) or TASKS[name].distractors_for(p)(random.Random(0), p, 1)[0]
        score = REWARDS[term["name"]]
        assert score(f"<think>t</think><answer>{gold}</answer>", p).score == 1.0
        assert score(f"<think>t</think><answer>{bad}</answer>", p).score == 0.0
