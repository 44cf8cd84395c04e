"""GUI action reward (UI-R1, arXiv 2503.21620; GUI-R1, arXiv 2504.10458).

r = w_type * R_T + w_args * R_A + w_format * R_F, with R_T = 1 if the predicted action type equals the
gold one; R_A = 1 if the types match and the arguments match: a click's point lies in the gold box
(``inclusive`` edges, UI-R1; strict, GUI-R1) or within ``point_radius`` px of a gold point; typed /
selected / opened text has token-set F1 >= ``text_threshold`` with the gold text (a one-word side also
matches by containment); a scroll has the gold direction; any other action matches on type alone.
R_F is the think/answer format (formatting.py, ``format_mode``). Defaults give UI-R1's 0..3; GUI-R1 is
``w_type=0, w_args=0.8, w_format=0.2, inclusive=false``.

The answer is read leniently: ``action`` / ``coordinate`` (or ``point``) / ``input_text`` (or ``text``)
/ ``direction`` keys in a JSON or Python-literal dict, single or double quotes. Gold: ``metadata``
keys ``action``, ``box`` or ``point``, ``text``, ``direction`` (else a JSON dict in ``prompt.answer``
with ``action``, ``gt_bbox``/``box``/``point``, ``input_text``). Coordinates map to the gold frame as in
grounding.py (``pred_frame``, ``image_size``, ``gold_size``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from reinforced.rewards.base import Fallback, extract_answer, register_reward
from reinforced.rewards.formatting import FormatMode, format_ok
from reinforced.rewards.grounding import Frame, parse_point, point_inside, to_gold_frame
from reinforced.types import Prompt, RewardResult

_CLICKS = {"click", "tap", "long_press", "double_click", "right_click"}
_TEXTS = {"type", "input_text", "select", "open_app", "open", "input"}


def _field(text: str, *keys: str) -> str | None:
    for key in keys:
        m = re.search(rf"[\"']{key}[\"']\s*:\s*[\"']([^\"']*)[\"']", text)
        if m:
            return m.group(1).strip()
    return None


def parse_action(text: str | None) -> dict[str, Any]:
    """Action fields from an answer span.

    >>> parse_action("[{'action': 'click', 'coordinate': [600, 55]}]")
    {'action': 'click', 'point': (600.0, 55.0), 'text': None, 'direction': None}
    """
    text = text or ""
    coord = re.search(r"[\"'](?:coordinate|point|position)[\"']\s*:\s*(\[[^\]]*\]|\([^)]*\))", text)
    point = parse_point(coord.group(1) if coord else text)
    action = _field(text, "action", "action_type")
    return {"action": action.lower() if action else None, "point": point,
            "text": _field(text, "input_text", "text", "value"), "direction": _field(text, "direction")}


def text_f1(pred: str, gold: str) -> float:
    """Token-set F1 of two strings (lower-cased whitespace tokens).

    >>> round(text_f1("hello", "hello world"), 6), text_f1("a b", "c")
    (0.666667, 0.0)
    """
    p, g = set(pred.lower().split()), set(gold.lower().split())
    common = len(p & g)
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def text_match(pred: str, gold: str, threshold: float) -> bool:
    """F1 >= threshold, or containment when either side is one token (GUI-R1).

    >>> text_match("abc", "xabcx", 0.5), text_match("hello there", "goodbye now", 0.5)
    (True, False)
    """
    a, b = pred.lower().strip(), gold.lower().strip()
    if a and b and (len(a.split()) == 1 or len(b.split()) == 1) and (a in b or b in a):
        return True
    return text_f1(a, b) >= threshold


def gold_action(prompt: Prompt) -> Mapping[str, Any]:
    """The gold action fields from metadata, else from a JSON dict in ``prompt.answer``."""
    meta = prompt.metadata
    if meta.get("action") is not None:
        return meta
    try:
        data = json.loads(prompt.answer or "")
    except ValueError:
        return {}
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        return {}
    box = data.get("box", data.get("gt_bbox"))
    return {"action": data.get("action"), "box": box if box is not None and len(box) == 4 else None,
            "point": data.get("point", box if box is not None and len(box) == 2 else None),
            "text": data.get("input_text", data.get("text")), "direction": data.get("direction")}


def _args_ok(pred: Mapping[str, Any], gold: Mapping[str, Any], prompt: Prompt, inclusive: bool,
             point_radius: float, text_threshold: float, pred_frame: str | None) -> bool:
    action = pred["action"]
    if action in _CLICKS:
        if pred["point"] is None:
            return False
        x, y = to_gold_frame(pred["point"], prompt.metadata, pred_frame)
        if gold.get("box") is not None:
            return point_inside(x, y, [float(v) for v in gold["box"]], inclusive)
        if gold.get("point") is not None:
            gx, gy = (float(v) for v in gold["point"])
            return (x - gx) ** 2 + (y - gy) ** 2 < point_radius**2
        return False
    if action == "scroll":
        want = gold.get("direction") or gold.get("text")
        got = pred["direction"] or pred["text"]
        return bool(want) and bool(got) and str(got).lower() == str(want).lower()
    if action in _TEXTS and gold.get("text"):
        return pred["text"] is not None and text_match(pred["text"], str(gold["text"]), text_threshold)
    return True


@register_reward("gui_action")
def gui_action(
    completion: str,
    prompt: Prompt,
    w_type: float = 1.0,
    w_args: float = 1.0,
    w_format: float = 1.0,
    inclusive: bool = True,
    point_radius: float = 140.0,
    text_threshold: float = 0.5,
    format_mode: FormatMode = "lenient",
    pred_frame: Frame | None = None,
    fallback: Fallback = "none",
) -> RewardResult:
    """r = w_type*[type ok] + w_args*[type ok and click in box / text F1 >= 0.5 / scroll dir ok] + w_format*[format]

    >>> from reinforced.types import Prompt
    >>> p = Prompt("p", "q", metadata={"action": "click", "box": [0, 0, 10, 10]})
    >>> gui_action("<think>t</think><answer>{'action': 'click', 'coordinate': [5, 5]}</answer>", p).score
    3.0
    """
    gold = gold_action(prompt)
    if not gold.get("action"):
        return RewardResult(score=None, info={"error": "no gold action (metadata 'action' or JSON answer)"})
    pred = parse_action(extract_answer(completion, fallback))
    type_ok = pred["action"] is not None and pred["action"] == str(gold["action"]).lower()
    args_ok = type_ok and _args_ok(pred, gold, prompt, inclusive, point_radius, text_threshold, pred_frame)
    fmt = format_ok(completion, format_mode)
    parts = {"action_type": float(type_ok), "args": float(args_ok), "format": float(fmt)}
    score = w_type * parts["action_type"] + w_args * parts["args"] + w_format * parts["format"]
    return RewardResult(score=score, components=parts, info={"action": pred["action"]})
