"""Text procedural tasks: arithmetic, multi-step word problems, Countdown, sequence classification.

Each generator is ``generate(rng, difficulty, **params) -> Prompt`` with an exact answer computed with
integers / ``fractions.Fraction`` (never floats). ``difficulty`` in [0, 1] sets the size of the problem:

- ``arithmetic``: d -> digits 1..4 per operand and 2..4 operands (d=0.3: two 2-digit numbers).
- ``word_problem``: GSM8K-style stories of 1..5 steps (add, remove, buy packs, share equally, double).
- ``countdown``: TinyZero / d1 Countdown (Pan et al. 2025): 3..6 numbers, reach the target using each
  number exactly once with + - * / and parentheses; answer type ``expression_equals_target``.
- ``sequence_type``: label a number sequence arithmetic / geometric / fibonacci / squares; shorter and
  larger sequences are harder.
"""

from __future__ import annotations

import random
from fractions import Fraction
from typing import Any

from reinforced.data.tasks.base import Task, register_task
from reinforced.types import Prompt

ACCURACY_AND_FORMAT: tuple[dict[str, Any], ...] = (
    {"name": "math_answer", "weight": 1.0, "accuracy": True},
    {"name": "format", "weight": 0.1},
)


def _level(difficulty: float, levels: int) -> int:
    """Bucket a difficulty in [0, 1] into 0..levels-1.

    >>> [_level(d, 4) for d in (0.0, 0.3, 0.5, 1.0)]
    [0, 1, 2, 3]
    """
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must lie in [0, 1], got {difficulty}")
    return min(levels - 1, int(difficulty * levels))


def arithmetic(rng: random.Random, difficulty: float = 0.3, digits: int | None = None,
               operands: int | None = None, ops: str = "+-") -> Prompt:
    """``a op b op c ...`` with ``digits``-digit operands; the answer is the exact integer value."""
    digits = digits or 1 + _level(difficulty, 4)
    operands = operands or 2 + _level(difficulty, 3)
    if digits < 1 or operands < 2 or not ops or set(ops) - set("+-*"):
        raise ValueError(f"arithmetic needs digits >= 1, operands >= 2 and ops from '+-*', got "
                         f"digits={digits}, operands={operands}, ops={ops!r}")
    low = 0 if digits == 1 else 10 ** (digits - 1)
    numbers = [rng.randint(low, 10**digits - 1) for _ in range(operands)]
    chosen = [rng.choice(ops) for _ in range(operands - 1)]
    expr = str(numbers[0]) + "".join(f" {o} {n}" for o, n in zip(chosen, numbers[1:], strict=True))
    value = _evaluate(numbers, chosen)
    return Prompt(prompt_id="", question=f"What is {expr}?", answer=str(value), answer_type="number",
                  metadata={"difficulty": difficulty, "expression": expr, "numbers": numbers, "ops": chosen})


def _evaluate(numbers: list[int], ops: list[str]) -> int:
    """Left-to-right with * binding tighter, as written (integers only)."""
    terms: list[int] = [numbers[0]]
    signs: list[str] = []
    for op, n in zip(ops, numbers[1:], strict=True):
        if op == "*":
            terms[-1] *= n
        else:
            terms.append(n)
            signs.append(op)
    total = terms[0]
    for sign, t in zip(signs, terms[1:], strict=True):
        total = total + t if sign == "+" else total - t
    return total


NAMES = ("Ana", "Ben", "Chloe", "Dev", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade")
ITEMS = ("apples", "stickers", "marbles", "pencils", "cookies", "stamps", "shells", "cards")


def word_problem(rng: random.Random, difficulty: float = 0.3, steps: int | None = None) -> Prompt:
    """A story with ``steps`` operations on one quantity; the answer is the final count."""
    steps = steps or 1 + _level(difficulty, 5)
    scale = 10 * (1 + _level(difficulty, 4))
    name, friend = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    count = rng.randint(2, scale)
    sentences = [f"{name} has {count} {item}."]
    trace: list[tuple[str, int, int]] = []
    for _ in range(steps):
        kind = rng.choice(("add", "remove", "packs", "share", "double"))
        if kind == "remove" and count < 2 or kind == "share" and count < 4:
            kind = "add"
        sentence, count, arg = _story_step(rng, kind, count, name, friend, item, scale)
        sentences.append(sentence)
        trace.append((kind, arg, count))
    sentences.append(f"How many {item} does {name} have now?")
    return Prompt(prompt_id="", question=" ".join(sentences), answer=str(count), answer_type="number",
                  metadata={"difficulty": difficulty, "steps": trace})


def _story_step(rng: random.Random, kind: str, count: int, name: str, friend: str, item: str,
                scale: int) -> tuple[str, int, int]:
    if kind == "add":
        k = rng.randint(1, scale)
        return f"{friend} gives {name} {k} more {item}.", count + k, k
    if kind == "remove":
        k = rng.randint(1, count - 1)
        return f"{name} gives {k} {item} to {friend}.", count - k, k
    if kind == "packs":
        packs, each = rng.randint(2, 5), rng.randint(2, 9)
        return f"{name} buys {packs} packs with {each} {item} in each pack.", count + packs * each, packs * each
    if kind == "share":
        parts = rng.choice([p for p in (2, 3, 4, 5) if count % p == 0] or [1])
        if parts == 1:  # count is prime-ish: add instead so the answer stays an integer
            return _story_step(rng, "add", count, name, friend, item, scale)
        return (f"{name} splits the {item} equally among {parts} boxes and keeps just one box.",
                count // parts, parts)
    return f"{name}'s collection doubles.", count * 2, 2


def countdown(rng: random.Random, difficulty: float = 0.3, count: int | None = None,
              max_number: int | None = None) -> Prompt:
    """Numbers and a target reachable by an expression using each number once (+ - * /, exact)."""
    count = count or 3 + _level(difficulty, 4)
    max_number = max_number or 10 + 90 * _level(difficulty, 2)
    for _ in range(1000):
        numbers = [rng.randint(1, max_number) for _ in range(count)]
        expr, value = _random_expression(rng, numbers)
        if value.denominator == 1 and 0 < value <= 1000:
            target = int(value)
            nums = ", ".join(map(str, numbers))
            question = (f"Using the numbers [{nums}], create an arithmetic expression that equals {target}. "
                        "You may use +, -, *, / and parentheses; each number must be used exactly once.")
            return Prompt(prompt_id="", question=question, answer=str(target),
                          answer_type="expression_equals_target",
                          metadata={"difficulty": difficulty, "numbers": numbers, "target": target,
                                    "reference_solution": expr, "form_answer": expr})
    raise RuntimeError(f"countdown: no integer target found for count={count}, max_number={max_number}")


def _random_expression(rng: random.Random, numbers: list[int]) -> tuple[str, Fraction]:
    """Combine the numbers (shuffled) pairwise with random operators into one expression tree."""
    items: list[tuple[str, Fraction]] = [(str(n), Fraction(n)) for n in numbers]
    rng.shuffle(items)
    while len(items) > 1:
        (ea, a), (eb, b) = items.pop(rng.randrange(len(items))), items.pop(rng.randrange(len(items)))
        op = rng.choice("+-*/" if b != 0 else "+-*")
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else a}[op]
        items.append((f"({ea} {op} {eb})", value))
    expr, value = items[0]
    return (expr[1:-1] if expr.startswith("(") and len(numbers) > 1 else expr), value


def countdown_distractors(rng: random.Random, prompt: Prompt, k: int) -> list[str]:
    """Expressions over the same numbers that miss the target (wrong options for choice / yes-no)."""
    numbers, target = list(prompt.metadata["numbers"]), prompt.metadata["target"]
    out: list[str] = []
    for _ in range(200 * k):
        expr, value = _random_expression(rng, numbers)
        if value != target and expr not in out:
            out.append(expr)
        if len(out) == k:
            break
    return out


SEQUENCE_LABELS = ("arithmetic", "geometric", "fibonacci", "squares")


def sequence_type(rng: random.Random, difficulty: float = 0.3, length: int | None = None) -> Prompt:
    """Label a sequence: arithmetic (constant step), geometric (constant ratio >= 2), fibonacci
    (each term the sum of the two before), squares (consecutive perfect squares)."""
    length = length or 6 - _level(difficulty, 3)
    if length < 4:
        raise ValueError(f"sequence_type needs length >= 4 so the labels cannot overlap, got {length}")
    big = 1 + _level(difficulty, 3)
    label = rng.choice(SEQUENCE_LABELS)
    if label == "arithmetic":
        a, d = rng.randint(1, 20 * big), rng.choice([-1, 1]) * rng.randint(1, 9 * big)
        seq = [a + i * d for i in range(length)]
    elif label == "geometric":
        a, r = rng.randint(1, 5 * big), rng.randint(2, 2 + big)
        seq = [a * r**i for i in range(length)]
    elif label == "fibonacci":
        seq = [rng.randint(1, 5 * big), rng.randint(1, 5 * big)]
        while len(seq) < length:
            seq.append(seq[-1] + seq[-2])
    else:
        k = rng.randint(1, 10 * big)
        seq = [(k + i) ** 2 for i in range(length)]
    labels = ", ".join(SEQUENCE_LABELS)
    question = f"Which kind of sequence is {', '.join(map(str, seq))}? Answer with one of: {labels}."
    return Prompt(prompt_id="", question=question, answer=label, answer_type="label",
                  metadata={"difficulty": difficulty, "sequence": seq, "labels": list(SEQUENCE_LABELS)})


register_task(Task("arithmetic", "integer addition/subtraction; difficulty -> digits and operands", arithmetic,
                   ACCURACY_AND_FORMAT, defaults={"difficulty": 0.3}))
register_task(Task("word_problem", "multi-step word problems about one quantity (1-5 steps)", word_problem,
                   ACCURACY_AND_FORMAT, defaults={"difficulty": 0.3}))
register_task(Task("countdown", "reach a target with + - * / using each number once (3-6 numbers)", countdown,
                   ({"name": "expression_equals_target", "weight": 1.0, "accuracy": True},
                    {"name": "format", "weight": 0.1}),
                   defaults={"difficulty": 0.3}, distractors=countdown_distractors))
register_task(Task("sequence_type", "classify a number sequence: arithmetic/geometric/fibonacci/squares",
                   sequence_type,
                   ({"name": "label", "weight": 1.0, "accuracy": True}, {"name": "format", "weight": 0.1}),
                   defaults={"difficulty": 0.3}))
