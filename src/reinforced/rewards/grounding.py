"""Grounding rewards: one box (``iou``), several boxes (``detection``), a point (``point_in_box``).

IoU of boxes [x1, y1, x2, y2]: inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1)),
IoU = inter / (area_a + area_b - inter) (continuous; VLM-R1 arXiv 2504.07615 uses it as the REC reward).

Coordinate frames, declared per dataset in ``prompt.metadata`` (a reward param of the same name wins):

- ``pred_frame``: the frame the model writes in. ``pixel``: absolute pixels of the *resized model input*
  (Qwen2.5-VL; needs ``image_size``); ``norm1000``: 0-1000 (Qwen2-VL); ``norm1``: 0-1; ``gold``: already in
  the gold frame (default).
- ``gold_frame``: the frame of the gold boxes: ``pixel`` (pixels of the original image, needs
  ``gold_size``; default), ``norm1000`` or ``norm1``.
- ``image_size``: (w, h) of the image the model saw (e.g. ``image_grid_thw`` w*14, h*14);
  ``gold_size``: (w, h) of the original image the annotations use.

Gold: ``metadata["box"]`` (one box) / ``metadata["boxes"]`` (+ ``metadata["labels"]``), else boxes parsed
from ``prompt.answer``.

``detection`` matches predictions to gold greedily in confidence order (Visual-RFT arXiv 2503.01785): each
takes the unmatched gold of highest IoU, a match needs IoU >= ``iou_threshold`` (COCO, VLM-R1; Visual-RFT used >) (and the same label when
both sides have labels). Modes: ``f1`` = 2PR/(P+R); ``iou`` (Visual-RFT) = sum of matched IoU /
max(#gold, #pred); ``weighted`` (VLM-R1) = (a*position + b*label + c*completeness)/(a+b+c);
``map`` = mean over IoU thresholds 0.5:0.95 of all-point-interpolated AP of the confidence ranking.
``confidence_weight`` adds Visual-RFT's term: mean over predictions of (c if matched else 1 - c).
Both empty scores 1, exactly one empty 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from reinforced.rewards.base import Fallback, extract_answer, register_reward
from reinforced.types import Prompt, RewardResult

Box = tuple[float, float, float, float]
Frame = Literal["pixel", "norm1000", "norm1", "gold"]
_NUM = r"-?\d+(?:\.\d+)?"
_BOX_RE = re.compile(rf"[\[(]\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*[\])]")
_POINT_RE = re.compile(rf"[\[(]\s*({_NUM})\s*,\s*({_NUM})\s*[\])]")


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Continuous IoU of two [x1, y1, x2, y2] boxes (0 for degenerate boxes).

    >>> round(box_iou([10, 10, 50, 50], [30, 30, 70, 70]), 6), box_iou([0, 0, 100, 100], [25, 25, 75, 75])
    (0.142857, 0.25)
    """
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def parse_boxes(text: str | None) -> list[Box]:
    """Every ``[x1, y1, x2, y2]`` (or parenthesised) quadruple in the text, in order.

    >>> parse_boxes('[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}, (5,6,7,8.5)]')
    [(1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.5)]
    """
    return [tuple(float(v) for v in m.groups()) for m in _BOX_RE.finditer(text or "")]  # type: ignore[misc]


def _size(value: Any, key: str) -> tuple[float, float]:
    if value is None or len(value) != 2 or min(float(v) for v in value) <= 0:
        raise ValueError(f"metadata[{key!r}] must be a positive (width, height), got {value!r}")
    return float(value[0]), float(value[1])


def to_gold_frame(points: Sequence[float], meta: Mapping[str, Any], pred_frame: str | None = None) -> list[float]:
    """Map x, y, x, y, ... coordinates from the prediction frame to the gold frame (module docstring).

    >>> to_gold_frame([70, 56, 350, 280], {"pred_frame": "pixel", "image_size": (700, 560), "gold_size": (1000, 800)})
    [100.0, 80.0, 500.0, 400.0]
    """
    src = pred_frame or meta.get("pred_frame", "gold")
    dst = meta.get("gold_frame", "pixel")
    if src == "gold" or (src == dst and src != "pixel"):  # model-input pixels are not original pixels
        return [float(v) for v in points]
    scale_in = {"norm1000": (1000.0, 1000.0), "norm1": (1.0, 1.0)}
    scale_out = {"norm1000": (1000.0, 1000.0), "norm1": (1.0, 1.0)}
    if src not in ("pixel", *scale_in):
        raise ValueError(f"unknown pred_frame {src!r}; valid: pixel, norm1000, norm1, gold")
    if dst not in ("pixel", *scale_out):
        raise ValueError(f"unknown gold_frame {dst!r}; valid: pixel, norm1000, norm1")
    w_in, h_in = _size(meta.get("image_size"), "image_size") if src == "pixel" else scale_in[src]
    w_out, h_out = _size(meta.get("gold_size"), "gold_size") if dst == "pixel" else scale_out[dst]
    return [float(v) * (w_out / w_in if i % 2 == 0 else h_out / h_in) for i, v in enumerate(points)]


def gold_boxes(prompt: Prompt) -> list[Box]:
    """The gold boxes of a prompt: metadata box / boxes, else parsed from ``prompt.answer``."""
    meta = prompt.metadata
    if meta.get("box") is not None:
        return [tuple(float(v) for v in meta["box"])]  # type: ignore[list-item]
    if meta.get("boxes") is not None:
        return [tuple(float(v) for v in b) for b in meta["boxes"]]  # type: ignore[misc]
    return parse_boxes(prompt.answer)


@register_reward("iou")
def iou(
    completion: str,
    prompt: Prompt,
    threshold: float | None = None,
    pred_frame: Frame | None = None,
    fallback: Fallback = "none",
) -> RewardResult:
    """r = IoU(first box of the answer mapped to the gold frame, gold box); with threshold: 1[IoU >= threshold]

    >>> from reinforced.types import Prompt
    >>> iou("<answer>[0, 0, 10, 10]</answer>", Prompt("p", "q", metadata={"box": [9, 0, 20, 10]})).score
    0.05
    """
    gold = gold_boxes(prompt)
    if not gold:
        return RewardResult(score=None, info={"error": "no gold box (metadata 'box'/'boxes' or answer)"})
    boxes = parse_boxes(extract_answer(completion, fallback))
    if not boxes:
        return RewardResult(score=0.0, info={"reason": "no box in the answer"})
    pred = to_gold_frame(boxes[0], prompt.metadata, pred_frame)
    value = box_iou(pred, gold[0])
    score = value if threshold is None else float(value >= threshold)
    return RewardResult(score=score, components={"iou": value}, info={"box": pred})


def parse_detections(text: str | None) -> list[tuple[Box, float, str | None]]:
    """(box, confidence, label) items: one per ``{...}`` object holding a box, else one per bare box.
    Confidence defaults to 1.0; duplicate boxes are dropped (Visual-RFT).

    >>> parse_detections("[{'Position': [1, 2, 3, 4], 'Confidence': 0.9, 'label': 'dog'}, [1, 2, 3, 4]]")
    [((1.0, 2.0, 3.0, 4.0), 0.9, 'dog')]
    """
    text = text or ""
    items: list[tuple[Box, float, str | None]] = []
    objects = re.findall(r"\{[^{}]*\}", text)
    chunks = [o for o in objects if _BOX_RE.search(o)] or [m.group(0) for m in _BOX_RE.finditer(text)]
    seen: set[Box] = set()
    for chunk in chunks:
        box = parse_boxes(chunk)[0]
        conf = re.search(rf"[\"']?(?:confidence|score)[\"']?\s*:\s*({_NUM})", chunk, re.IGNORECASE)
        lab = re.search(r"[\"']?(?:label|category|class)[\"']?\s*:\s*[\"']([^\"']*)[\"']", chunk, re.IGNORECASE)
        if box in seen:
            continue
        seen.add(box)
        items.append((box, min(1.0, max(0.0, float(conf.group(1)))) if conf else 1.0,
                      lab.group(1).strip().lower() if lab else None))
    return items


def greedy_match(preds: Sequence[tuple[Box, float, str | None]], gold: Sequence[Box],
                 labels: Sequence[str | None], threshold: float) -> list[tuple[int, float]]:
    """For predictions in descending confidence, (gold index or -1, IoU of the match or 0).

    >>> greedy_match([((0, 0, 10, 10), 0.9, None)], [(0, 0, 10, 10), (0, 0, 10, 9)], [None, None], 0.5)
    [(0, 1.0)]
    """
    order = sorted(range(len(preds)), key=lambda i: -preds[i][1])
    used: set[int] = set()
    out: list[tuple[int, float]] = [(-1, 0.0)] * len(preds)
    for i in order:
        box, _, lab = preds[i]
        best, best_iou = -1, 0.0
        for j, g in enumerate(gold):
            same = lab is None or labels[j] is None or lab == labels[j]
            value = box_iou(box, g)
            if j not in used and same and value > best_iou:
                best, best_iou = j, value
        if best >= 0 and best_iou >= threshold:
            used.add(best)
            out[i] = (best, best_iou)
    return out


def average_precision(preds: Sequence[tuple[Box, float, str | None]], gold: Sequence[Box],
                      labels: Sequence[str | None], threshold: float) -> float:
    """All-point-interpolated AP of the confidence ranking at one IoU threshold."""
    matches = greedy_match(preds, gold, labels, threshold)
    order = sorted(range(len(preds)), key=lambda i: -preds[i][1])
    tp = cum = 0
    points: list[tuple[float, float]] = []  # (recall, precision)
    for rank, i in enumerate(order, start=1):
        cum += 1
        tp += int(matches[i][0] >= 0)
        points.append((tp / len(gold), tp / rank))
    ap, prev_r = 0.0, 0.0
    for k, (r, _) in enumerate(points):
        if r > prev_r:
            ap += (r - prev_r) * max(p for _, p in points[k:])
            prev_r = r
    return ap


def detection_score(preds: Sequence[tuple[Box, float, str | None]], gold: Sequence[Box],
                    labels: Sequence[str | None], mode: str, threshold: float,
                    weights: Sequence[float] = (0.7, 0.0, 0.3)) -> dict[str, float]:
    """The detection components (``score`` plus the parts of the chosen mode)."""
    if not preds or not gold:
        return {"score": float(not preds and not gold), "confidence": float(not preds and not gold)}
    matches = greedy_match(preds, gold, labels, threshold)
    hits = [(j, v) for j, v in matches if j >= 0]
    conf = sum(c if m[0] >= 0 else 1.0 - c for (_, c, _), m in zip(preds, matches, strict=True)) / len(preds)
    out = {"confidence": conf, "precision": len(hits) / len(preds), "recall": len(hits) / len(gold)}
    if mode == "f1":
        p, r = out["precision"], out["recall"]
        out["score"] = 2 * p * r / (p + r) if p + r else 0.0
    elif mode == "iou":
        out["score"] = sum(v for _, v in hits) / max(len(gold), len(preds))
    elif mode == "weighted":
        a, b, c = weights
        label_ok = [preds[i][2] == labels[j] for i, (j, _) in enumerate(matches) if j >= 0]
        position = sum(v if ok else 0.0 for (_, v), ok in zip(hits, label_ok, strict=True)) / len(gold)
        label_frac = sum(label_ok) / len(gold)
        complete = 1.0 - ((1 - out["recall"]) + (1 - out["precision"])) / 2
        out.update(position=position, label=label_frac, completeness=complete,
                   score=(a * position + b * label_frac + c * complete) / (a + b + c))
    else:
        ths = [0.5 + 0.05 * k for k in range(10)]
        out["score"] = sum(average_precision(preds, gold, labels, round(t, 10)) for t in ths) / len(ths)
    return out


@register_reward("detection")
def detection(
    completion: str,
    prompt: Prompt,
    mode: Literal["f1", "iou", "weighted", "map"] = "f1",
    iou_threshold: float = 0.5,
    confidence_weight: float = 0.0,
    weights: Sequence[float] = (0.7, 0.0, 0.3),
    pred_frame: Frame | None = None,
    fallback: Fallback = "none",
) -> RewardResult:
    """r = match score of predicted vs gold boxes (greedy by confidence, IoU >= 0.5; f1|iou|weighted|map) + w_c * confidence term

    >>> from reinforced.types import Prompt
    >>> detection("<answer>[[0,0,10,10],[50,50,60,60]]</answer>", Prompt("p", "q", metadata={"boxes": [[0,0,10,10]]})).score
    0.6666666666666666
    """
    gold = gold_boxes(prompt)
    labels = [str(x).lower() for x in prompt.metadata.get("labels", [])] or [None] * len(gold)
    raw = parse_detections(extract_answer(completion, fallback))
    preds = [(tuple(to_gold_frame(b, prompt.metadata, pred_frame)), c, lab) for b, c, lab in raw]
    parts = detection_score(preds, gold, labels, mode, iou_threshold, weights)  # type: ignore[arg-type]
    return RewardResult(score=parts["score"] + confidence_weight * parts["confidence"], components=parts)


def point_inside(x: float, y: float, box: Sequence[float], inclusive: bool = True) -> bool:
    """Whether (x, y) lies in box; edges count when ``inclusive`` (UI-R1) and not otherwise (GUI-R1).

    >>> point_inside(300, 250, [100, 200, 300, 400]), point_inside(300, 250, [100, 200, 300, 400], False)
    (True, False)
    """
    if inclusive:
        return box[0] <= x <= box[2] and box[1] <= y <= box[3]
    return box[0] < x < box[2] and box[1] < y < box[3]


def parse_point(text: str | None) -> tuple[float, float] | None:
    """The first ``[x, y]`` / ``(x, y)`` pair in the text."""
    m = _POINT_RE.search(text or "")
    return (float(m.group(1)), float(m.group(2))) if m else None


@register_reward("point_in_box")
def point_in_box(
    completion: str,
    prompt: Prompt,
    inclusive: bool = True,
    pred_frame: Frame | None = None,
    fallback: Fallback = "none",
) -> RewardResult:
    """r = 1 if the answer point [x, y] (mapped to the gold frame) lies inside the gold box else 0

    >>> from reinforced.types import Prompt
    >>> point_in_box("<answer>(5, 5)</answer>", Prompt("p", "q", metadata={"box": [0, 0, 10, 10]})).score
    1.0
    """
    gold = gold_boxes(prompt)
    if not gold:
        return RewardResult(score=None, info={"error": "no gold box"})
    point = parse_point(extract_answer(completion, fallback))
    if point is None:
        return RewardResult(score=0.0, info={"reason": "no point in the answer"})
    x, y = to_gold_frame(point, prompt.metadata, pred_frame)
    return RewardResult(score=float(point_inside(x, y, gold[0], inclusive)), info={"point": (x, y)})
