"""Procedural visual tasks: answers re-derived from the pixels alone, seeded determinism, difficulty knob."""

from __future__ import annotations

import random

import numpy as np
import pytest

import reinforced.data.tasks.visual as visual
from reinforced.data.tasks.base import TASKS
from reinforced.types import Prompt

VISUAL = ["bar_chart", "count_shapes", "digit_arithmetic", "grounding", "shape_colour"]
KNOWN_REWARDS = {"count", "math_answer", "numeric", "choice", "label", "iou", "format"}
SEEDS = range(40)


def pixels(prompt: Prompt) -> np.ndarray:
    return np.asarray(prompt.images[0].convert("RGB")).astype(int)  # [H, W, 3]


def nearest_colour(rgb: np.ndarray) -> str:
    return min(visual.COLOURS, key=lambda n: int(((np.array(visual.COLOURS[n]) - rgb) ** 2).sum()))


def classify(mask: np.ndarray) -> str:
    """Shape kind from how much of its bounding box it fills: square 1, circle pi/4, triangle 1/2."""
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return "square" if fill > 0.93 else "circle" if fill > 0.65 else "triangle"


def sample(name: str, seed: int, difficulty: float) -> Prompt:
    return TASKS[name].sample(random.Random(seed), difficulty=difficulty)


def test_registered_with_known_rewards() -> None:
    for name in VISUAL:
        task = TASKS[name]
        assert task.modality == "image"
        names = {t["name"] for t in task.reward_terms}
        assert names <= KNOWN_REWARDS and "format" in names
        assert sum(bool(t.get("accuracy")) for t in task.reward_terms) == 1


@pytest.mark.parametrize("name", VISUAL)
def test_seeded_and_bad_difficulty(name: str) -> None:
    a, b = sample(name, 3, 0.5), sample(name, 3, 0.5)
    assert a.answer == b.answer and a.prompt_id == b.prompt_id and a.images[0].tobytes() == b.images[0].tobytes()
    assert len({sample(name, s, 0.5).images[0].tobytes() for s in range(6)}) > 1
    assert a.metadata["image_size"] == a.images[0].size
    with pytest.raises(ValueError, match="1.5"):
        sample(name, 0, 1.5)


@pytest.mark.parametrize("difficulty", [0.0, 0.5, 1.0])
def test_count_shapes_counted_back_from_pixels(difficulty: float) -> None:
    counts = set()
    for seed in SEEDS:
        p = sample("count_shapes", seed, difficulty)
        img, grid = pixels(p), p.metadata["grid"]
        cell = img.shape[0] // grid
        found = 0
        for r in range(grid):
            for c in range(grid):
                ink = (img[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] < 250).any(-1)
                found += int(ink.any() and classify(ink) == p.metadata["shape"])
        assert str(found) == p.answer, p.prompt_id
        counts.add(found)
    assert max(counts) <= 3 + round(5 * difficulty) and len(counts) >= 3


def read_seven_segment(img: np.ndarray, unit: int) -> int:
    """Decode the number in one half-image by probing each segment's centre.

    Digits are located from the right: every digit lights its right column (b or c), not its left one.
    """
    ink = (img < 128).all(-1)  # [H, W]
    cols = np.nonzero(ink.any(0))[0]
    top = int(np.nonzero(ink.any(1))[0].min())
    digits, right = [], int(cols.max())
    while right >= cols.min():
        x, lit = right - 4 * unit + 1, ""
        for seg, (x0, y0, x1, y1) in visual.SEGMENTS.items():
            cy, cx = top + (y0 + y1) * unit // 2, x + (x0 + x1) * unit // 2
            if seg in "bcef":  # vertical bars: probe away from the horizontal ones
                cy += unit // 2 if seg in "ce" else -(unit // 2)
            lit += seg if ink[cy, cx] else ""
        digits.insert(0, next(d for d, segs in visual.DIGIT_SEGMENTS.items() if set(segs) == set(lit)))
        right -= 5 * unit
    return int("".join(map(str, digits)))


@pytest.mark.parametrize("difficulty", [0.0, 0.6, 1.0])
def test_digit_arithmetic_read_back(difficulty: float) -> None:
    for seed in SEEDS:
        p = sample("digit_arithmetic", seed, difficulty)
        img, unit = pixels(p), p.metadata["unit"]
        half = img.shape[1] // 2
        a, b = read_seven_segment(img[:, :half], unit), read_seven_segment(img[:, half:], unit)
        op = "sum" if "sum" in p.question else "difference" if "difference" in p.question else "product"
        assert str({"sum": a + b, "difference": a - b, "product": a * b}[op]) == p.answer, p.prompt_id


@pytest.mark.parametrize("difficulty", [0.0, 1.0])
def test_bar_chart_heights_measured(difficulty: float) -> None:
    for seed in SEEDS:
        p = sample("bar_chart", seed, difficulty)
        img = pixels(p)
        colour = p.question.split("of the ")[1].split(" bar")[0]
        mask = (np.abs(img - np.array(visual.COLOURS[colour])).sum(-1) < 30)  # [H, W]
        height_px = int(mask.any(1).sum())
        assert str(round(height_px / p.metadata["unit_px"])) == p.answer, p.prompt_id


def test_shape_colour_classified_from_pixels() -> None:
    for seed in SEEDS:
        p = sample("shape_colour", seed, 0.3)
        img = pixels(p)
        ink = (img < 250).any(-1)
        ys, xs = np.nonzero(ink)
        colour = nearest_colour(img[int(ys.mean()), int(xs.mean())])
        truth = colour if "colour" in p.question else classify(ink)
        assert truth == p.answer and p.answer in p.question, p.prompt_id


@pytest.mark.parametrize("difficulty", [0.0, 1.0])
def test_grounding_box_found_from_pixels(difficulty: float) -> None:
    for seed in SEEDS:
        p = sample("grounding", seed, difficulty)
        img = pixels(p)
        colour, shape = p.metadata["target"]
        mask = (np.abs(img - np.array(visual.COLOURS[colour])).sum(-1) < 30)
        ys, xs = np.nonzero(mask)
        box = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
        gold = list(p.metadata["box"])
        assert str(gold) == p.answer
        assert all(abs(u - v) <= 1 for u, v in zip(box, gold, strict=True)), (p.prompt_id, box, gold)
        assert classify(mask) == shape
