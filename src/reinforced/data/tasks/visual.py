"""Procedural visual tasks: images rendered with Pillow, answers known exactly (R1-V / Vision-R1 style).

Each task draws a seeded image and asks one question whose answer follows from the drawing:

- ``count_shapes``: N shapes (one per grid cell, so none overlap); "how many circles?" (with distractors of
  other kinds at higher difficulty). Answer N.
- ``digit_arithmetic``: two numbers drawn as seven-segment digits; their sum (difference, product at higher
  difficulty). Seven segments keep digits legible at 64 px without any font file.
- ``bar_chart``: coloured bars on a ruled axis; "what is the value of the blue bar?". Answer the height.
- ``shape_colour``: one shape; "what colour / what shape is it?" (labels). Answer the label.
- ``grounding``: several shapes; "give the box of the red square" as [x1, y1, x2, y2] in pixels of the image
  the model sees (``metadata["image_size"]``); checked by IoU.

``difficulty`` in [0, 1] widens ranges and adds distractors. Images are sized in multiples of 16 px, so
Qwen2-VL-style processors (28 or 16 px factors at our patch sizes) see them unresized; ``image_size`` is
always stored so grounding rewards can rescale if a processor does resize.
"""

from __future__ import annotations

import random
from typing import Any

from PIL import Image, ImageDraw

from reinforced.data.tasks.base import Task, register_task
from reinforced.types import Prompt

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 30), "blue": (30, 60, 220), "yellow": (230, 200, 0),
    "purple": (140, 40, 180), "orange": (250, 130, 0),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
FORMAT = {"name": "format", "weight": 0.1}
# Seven-segment layout: segment name -> (x0, y0, x1, y1) in a 4x7 unit cell; digit -> lit segments.
SEGMENTS = {"a": (0, 0, 4, 1), "b": (3, 0, 4, 4), "c": (3, 3, 4, 7), "d": (0, 6, 4, 7),
            "e": (0, 3, 1, 7), "f": (0, 0, 1, 4), "g": (0, 3, 4, 4)}
DIGIT_SEGMENTS = {0: "abcdef", 1: "bc", 2: "abged", 3: "abgcd", 4: "fgbc", 5: "afgcd", 6: "afgedc",
                  7: "abc", 8: "abcdefg", 9: "abcdfg"}


def _check_difficulty(difficulty: float) -> float:
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty!r}")
    return float(difficulty)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    """Fill ``shape`` inside ``box`` (x0, y0, x1, y1 inclusive pixel bounds)."""
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")


def _prompt(rng_id: str, task: str, question: str, answer: str, image: Image.Image, answer_type: str,
            difficulty: float, **meta: Any) -> Prompt:
    return Prompt(
        prompt_id=f"{task}-{rng_id}", question=question, answer=answer, images=(image,), answer_type=answer_type,
        task=task, metadata={"difficulty": difficulty, "image_size": image.size, **meta},
    )


def _rid(rng: random.Random) -> str:
    return f"{rng.getrandbits(40):010x}"


def count_shapes(rng: random.Random, difficulty: float = 0.0, image_size: int = 64, grid: int = 4,
                 shape: str | None = None) -> Prompt:
    """Count the ``shape``s; one shape per grid cell. Counts 1..(3 + 5*difficulty) capped by the cells."""
    difficulty = _check_difficulty(difficulty)
    cells = grid * grid
    max_count = min(cells, 3 + round(5 * difficulty))
    target = shape or rng.choice(SHAPES)
    n = rng.randint(1, max_count)
    num_distractors = rng.randint(0, round(3 * difficulty)) if difficulty > 0 else 0
    slots = rng.sample(range(cells), min(cells, n + num_distractors))
    kinds = [target] * n + [rng.choice([s for s in SHAPES if s != target]) for _ in slots[n:]]
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = image_size // grid
    margin = max(1, cell // 8)
    boxes = []
    for slot, kind in zip(slots, kinds, strict=True):
        x0, y0 = (slot % grid) * cell + margin, (slot // grid) * cell + margin
        box = (x0, y0, x0 + cell - 2 * margin - 1, y0 + cell - 2 * margin - 1)
        draw_shape(draw, kind, box, COLOURS[rng.choice(["red", "green", "blue"])] if difficulty > 0.5 else INK)
        boxes.append(box)
    question = f"How many {target}s are in the image?"
    return _prompt(_rid(rng), "count_shapes", question, str(n), image, "number", difficulty,
                   shape=target, cells=slots[:n], boxes=boxes[:n], grid=grid)


def draw_digit(draw: ImageDraw.ImageDraw, digit: int, x: int, y: int, unit: int, colour: tuple[int, int, int] = INK) -> None:
    """A seven-segment ``digit`` whose top-left corner is (x, y); it is 4*unit wide and 7*unit tall."""
    for seg in DIGIT_SEGMENTS[digit]:
        sx0, sy0, sx1, sy1 = SEGMENTS[seg]
        draw.rectangle((x + sx0 * unit, y + sy0 * unit, x + sx1 * unit - 1, y + sy1 * unit - 1), fill=colour)


def digit_arithmetic(rng: random.Random, difficulty: float = 0.0, image_size: int = 64) -> Prompt:
    """Two numbers drawn side by side; sum at difficulty < 0.5, else sum / difference / product.

    Operands are one digit (0-9) below difficulty 0.5; at 1.0 the left operand may have two digits.
    """
    difficulty = _check_difficulty(difficulty)
    ops = ["+"] if difficulty < 0.5 else ["+", "-", "*"]
    op = rng.choice(ops)
    hi = 9 if difficulty < 0.75 else 19
    a, b = rng.randint(0, hi), rng.randint(0, 9)
    if op == "-" and b > a:
        a, b = b, a
    answer = {"+": a + b, "-": a - b, "*": a * b}[op]
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    max_digits = len(str(hi))
    # Each number is centred in its half: n digits take 5n-1 units across (4 wide + 1 gap), 7 tall.
    unit = min(image_size // 16, (image_size // 2 - 2) // (5 * max_digits - 1))
    top = (image_size - 7 * unit) // 2
    for half, value in ((0, a), (1, b)):
        digits = [int(c) for c in str(value)]
        width = len(digits) * 5 * unit - unit
        left = half * image_size // 2 + (image_size // 2 - width) // 2
        for k, d in enumerate(digits):
            draw_digit(draw, d, left + k * 5 * unit, top, unit)
    word = {"+": "sum", "-": "difference (left minus right)", "*": "product"}[op]
    question = f"What is the {word} of the two numbers in the image?"
    return _prompt(_rid(rng), "digit_arithmetic", question, str(answer), image, "number", difficulty,
                   operands=(a, b), op=op, unit=unit)


def bar_chart(rng: random.Random, difficulty: float = 0.0, image_size: int = 64) -> Prompt:
    """Bars of integer height 1..max_value on a ruled axis; ask the value of one bar (by colour)."""
    difficulty = _check_difficulty(difficulty)
    num_bars = 2 + round(2 * difficulty)
    max_value = 5 + round(5 * difficulty)
    names = rng.sample(["red", "green", "blue", "orange"], num_bars)
    values = [rng.randint(1, max_value) for _ in names]
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    base, top = image_size - 4, 4
    step = (base - top) // max_value  # pixels per unit
    for v in range(0, max_value + 1):  # light rule lines every unit: values can be read by counting
        draw.line((0, base - v * step, image_size - 1, base - v * step), fill=(200, 200, 200))
    slot = image_size // num_bars
    for k, (name, value) in enumerate(zip(names, values, strict=True)):
        x0 = k * slot + slot // 4
        draw.rectangle((x0, base - value * step, x0 + slot // 2 - 1, base - 1), fill=COLOURS[name])
    target = rng.randrange(num_bars)
    question = f"What is the value of the {names[target]} bar?"
    return _prompt(_rid(rng), "bar_chart", question, str(values[target]), image, "number", difficulty,
                   colours=tuple(names), values=tuple(values), unit_px=step, baseline=base)


def shape_colour(rng: random.Random, difficulty: float = 0.0, image_size: int = 64) -> Prompt:
    """One shape; ask its colour or its kind (a label). Smaller shapes at higher difficulty."""
    difficulty = _check_difficulty(difficulty)
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    side = int(image_size * (0.7 - 0.4 * difficulty))
    x0, y0 = rng.randint(0, image_size - side), rng.randint(0, image_size - side)
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw_shape(ImageDraw.Draw(image), shape, (x0, y0, x0 + side - 1, y0 + side - 1), COLOURS[colour])
    ask_colour = rng.random() < 0.5
    labels = tuple(COLOURS) if ask_colour else SHAPES
    answer = colour if ask_colour else shape
    # Labels are named in the question (not as lettered choices): the answer is the label itself.
    question = f"What {'colour' if ask_colour else 'shape'} is the object? One of: {', '.join(labels)}."
    return _prompt(_rid(rng), "shape_colour", question, answer, image, "label", difficulty, labels=labels,
                   colour=colour, shape=shape, box=(x0, y0, x0 + side - 1, y0 + side - 1))


def grounding(rng: random.Random, difficulty: float = 0.0, image_size: int = 64) -> Prompt:
    """Several shapes of distinct (colour, kind); ask the box of one. Answer "[x1, y1, x2, y2]" in pixels."""
    difficulty = _check_difficulty(difficulty)
    num = 1 + round(3 * difficulty)
    # Distinct colours: the named object is unique by colour as well as by kind.
    pairs = [(c, rng.choice(SHAPES)) for c in rng.sample(["red", "green", "blue", "orange"], num)]
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    grid = 2
    cell = image_size // grid
    boxes = []
    for slot, (colour, shape) in zip(rng.sample(range(grid * grid), num), pairs, strict=True):
        side = rng.randint(cell // 2, cell - 2)
        x0 = (slot % grid) * cell + rng.randint(0, cell - side)
        y0 = (slot // grid) * cell + rng.randint(0, cell - side)
        box = (x0, y0, x0 + side - 1, y0 + side - 1)
        draw_shape(draw, shape, box, COLOURS[colour])
        boxes.append(box)
    k = rng.randrange(num)
    colour, shape = pairs[k]
    question = (f"Give the bounding box of the {colour} {shape} as [x1, y1, x2, y2] in pixels "
                f"(the image is {image_size}x{image_size}).")
    return _prompt(_rid(rng), "grounding", question, str(list(boxes[k])), image, "box", difficulty,
                   box=boxes[k], target=(colour, shape))


def _num(accuracy_reward: str) -> list[dict[str, Any]]:
    return [{"name": accuracy_reward, "accuracy": True}, FORMAT]


for _task in (
    Task("count_shapes", "count shapes in a rendered grid", count_shapes, _num("count"), "image"),
    Task("digit_arithmetic", "arithmetic on two seven-segment numbers", digit_arithmetic, _num("math_answer"), "image"),
    Task("bar_chart", "read one bar's value from a bar chart", bar_chart, _num("numeric"), "image"),
    Task("shape_colour", "name a shape's colour or kind", shape_colour, _num("label"), "image"),
    Task("grounding", "bounding box of a named shape (IoU)", grounding, _num("iou"), "image"),
):
    register_task(_task)
