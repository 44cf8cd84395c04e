"""Grounding and GUI rewards: spec vectors T-IOU*, T-REC1, T-VRFT1, T-OVD1, T-UI*, T-GUI*."""

from __future__ import annotations

import pytest

from reinforced.rewards import REWARDS
from reinforced.rewards.grounding import box_iou, parse_detections, to_gold_frame
from reinforced.types import Prompt


def run(name, text, answer=None, **kw):
    meta = kw.pop("metadata", {})
    return REWARDS[name](text, Prompt("p", "q", answer=answer, metadata=meta), **kw)


@pytest.mark.parametrize("a,b,expected", [
    ([10, 10, 50, 50], [30, 30, 70, 70], 1 / 7),  # T-IOU1
    ([0, 0, 10, 10], [9, 0, 20, 10], 0.05),  # T-IOU2 (continuous; the pixel variant's 0 is not used)
    ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),  # T-IOU3
    ([0, 0, 100, 100], [25, 25, 75, 75], 0.25),  # T-IOU4
    ([0, 0, 0, 10], [0, 0, 0, 10], 0.0),  # degenerate
])
def test_box_iou(a, b, expected):
    assert box_iou(a, b) == pytest.approx(expected)
    assert box_iou(b, a) == pytest.approx(expected)  # symmetric


def test_iou_reward_frames_rec1():  # T-REC1: Qwen2.5-VL pixels of the 700x560 input, gold on 1000x800
    meta = {"box": [100, 80, 500, 400], "pred_frame": "pixel", "image_size": [700, 560], "gold_size": [1000, 800]}
    assert run("iou", "<answer>[70,56,350,280]</answer>", metadata=meta).score == pytest.approx(1.0)
    # Qwen2-VL 0-1000 frame onto the same gold
    meta2 = {**meta, "pred_frame": "norm1000"}
    assert run("iou", '<answer>{"bbox_2d": [100, 100, 500, 500]}</answer>', metadata=meta2).score == pytest.approx(1.0)
    # gold in 0-1, prediction in input pixels
    meta3 = {"box": [0.1, 0.1, 0.5, 0.5], "gold_frame": "norm1", "pred_frame": "pixel", "image_size": [200, 100]}
    assert run("iou", "<answer>[20, 10, 100, 50]</answer>", metadata=meta3).score == pytest.approx(1.0)
    with pytest.raises(ValueError, match="image_size"):
        to_gold_frame([1, 2], {"pred_frame": "pixel", "gold_size": (10, 10)})
    with pytest.raises(ValueError, match="unknown pred_frame 'cm'"):
        to_gold_frame([1, 2], {"pred_frame": "cm"})


def test_iou_threshold_and_missing():
    meta = {"box": [0, 0, 10, 10]}
    assert run("iou", "<answer>[0, 0, 10, 6]</answer>", metadata=meta, threshold=0.5).score == 1.0
    assert run("iou", "<answer>[0, 0, 10, 4]</answer>", metadata=meta, threshold=0.5).score == 0.0
    assert run("iou", "<answer>no box</answer>", metadata=meta).score == 0.0
    assert run("iou", "<answer>[0,0,1,1]</answer>").score is None
    assert run("iou", "<answer>[0,0,10,10]</answer>", answer="[0, 0, 10, 10]").score == 1.0


VRFT = ("<answer>[{'Position': [10,10,100,100], 'Confidence': 0.9}, {'Position': [400,400,450,450], "
        "'Confidence': 0.6}, {'Position': [200,200,300,310], 'Confidence': 0.8}]</answer>")
GT2 = {"boxes": [[0, 0, 100, 100], [200, 200, 300, 300]]}


def test_detection_visual_rft_vector():  # T-VRFT1
    r = run("detection", VRFT, metadata=GT2, mode="iou", confidence_weight=1.0)
    assert r.components["score"] == pytest.approx(0.573030, abs=1e-6)
    assert r.components["confidence"] == pytest.approx(0.7)
    assert r.score + 1.0 == pytest.approx(2.273030, abs=1e-6)  # + format, as in the paper's total


def test_detection_weighted_vlm_r1_vector():  # T-OVD1
    text = VRFT.replace("'Confidence': 0.9}", "'Confidence': 0.9, 'label': 'dog'}")
    text = text.replace("'Confidence': 0.6}", "'Confidence': 0.6, 'label': 'car'}")
    text = text.replace("'Confidence': 0.8}", "'Confidence': 0.8, 'label': 'cat'}")
    r = run("detection", text, metadata={**GT2, "labels": ["dog", "cat"]}, mode="weighted")
    assert r.components["position"] == pytest.approx(0.859545, abs=1e-6)
    assert r.components["completeness"] == pytest.approx(0.833333, abs=1e-6)
    assert r.score == pytest.approx(0.851682, abs=1e-6)


def test_detection_f1_map_and_empty():
    exact = "<answer>[[0,0,100,100],[200,200,300,300]]</answer>"
    assert run("detection", exact, metadata=GT2).score == 1.0
    assert run("detection", exact, metadata=GT2, mode="map").score == pytest.approx(1.0)
    assert run("detection", VRFT, metadata=GT2).score == pytest.approx(0.8)  # P 2/3, R 1
    # mAP is lower when the false positive outranks a true positive, and for loose boxes at high IoU
    fp_first = VRFT.replace("0.6}", "0.95}")
    assert run("detection", fp_first, metadata=GT2, mode="map").score < run("detection", VRFT, metadata=GT2, mode="map").score
    assert run("detection", "<answer>[]</answer>", metadata={"boxes": []}).score == 1.0
    assert run("detection", "<answer>[]</answer>", metadata=GT2).score == 0.0
    assert run("detection", "<answer>[[0,0,100,100]]</answer>", metadata={"boxes": []}).score == 0.0
    # a label mismatch blocks the match when both sides carry labels
    lab = "<answer>[{'bbox_2d': [0,0,100,100], 'label': 'cat'}]</answer>"
    assert run("detection", lab, metadata={"boxes": [[0, 0, 100, 100]], "labels": ["dog"]}).score == 0.0


def test_parse_detections_dedup_and_truncation():
    items = parse_detections("[{'Position': [1,2,3,4], 'Confidence': 1.7}, {'Position': [1,2,3,4]}, {'Position': [5,6")
    assert items == [((1.0, 2.0, 3.0, 4.0), 1.0, None)]


def test_point_in_box():
    meta = {"box": [100, 200, 300, 400]}
    assert run("point_in_box", "<answer>[150, 250]</answer>", metadata=meta).score == 1.0
    assert run("point_in_box", "<answer>[300, 250]</answer>", metadata=meta).score == 1.0
    assert run("point_in_box", "<answer>[300, 250]</answer>", metadata=meta, inclusive=False).score == 0.0
    assert run("point_in_box", "<answer>none</answer>", metadata=meta).score == 0.0


UI_META = {"action": "click", "box": [825, 72, 1673, 149], "pred_frame": "pixel",
           "image_size": [1000, 1000], "gold_size": [2000, 2000]}  # scale (2.0, 2.0)


def ui(answer, meta=UI_META, **kw):
    return run("gui_action", f"<think>t</think><answer>{answer}</answer>", metadata=meta, **kw)


def test_gui_ui_r1_vectors():
    assert ui("[{'action': 'click', 'coordinate': [600, 55]}]").score == 3.0  # T-UI1
    assert ui("[{'action': 'click', 'coordinate': [300, 55]}]").score == 2.0  # T-UI2
    assert ui("[{'action': 'scroll', 'coordinate': [600, 55]}]").score == 1.0  # T-UI3
    assert ui("[{'action': 'navigate_back'}]", meta={"action": "navigate_back"}).score == 3.0  # T-UI4
    r = run("gui_action", "[{'action': 'click', 'coordinate': [600, 55]}]", metadata=UI_META)
    assert r.score == 0.0  # no answer block: nothing parsed, no format


GUI_R1 = {"w_type": 0.0, "w_args": 0.8, "w_format": 0.2, "inclusive": False}


def test_gui_gui_r1_vectors():
    box = {"action": "click", "box": [100, 200, 300, 400]}
    assert ui('{"action": "click", "point": [150, 250]}', box, **GUI_R1).score == pytest.approx(1.0)  # T-GUI1
    assert ui('{"action": "click", "point": [300, 250]}', box, **GUI_R1).score == pytest.approx(0.2)  # T-GUI2
    typ = {"action": "type", "text": "hello world"}
    assert ui('{"action": "type", "input_text": "hello"}', typ, **GUI_R1).score == pytest.approx(1.0)  # T-GUI3
    assert ui('{"action": "type", "input_text": "goodbye"}', typ, **GUI_R1).score == pytest.approx(0.2)
    pt = {"action": "click", "point": [500, 500]}
    assert ui('{"action": "click", "point": [600, 590]}', pt, **GUI_R1).score == pytest.approx(1.0)  # T-GUI4
    assert ui('{"action": "click", "point": [600, 600]}', pt, **GUI_R1).score == pytest.approx(0.2)
    scroll = {"action": "scroll", "direction": "up"}
    assert ui('{"action": "scroll", "direction": "UP"}', scroll, **GUI_R1).score == pytest.approx(1.0)
    assert ui('{"action": "scroll", "direction": "down"}', scroll, **GUI_R1).score == pytest.approx(0.2)


def test_gui_gold_from_answer_json():
    p = Prompt("p", "q", answer='{"action": "click", "gt_bbox": [0, 0, 10, 10]}')
    assert REWARDS["gui_action"]("<think>a</think><answer>{'action': 'click', 'point': [5, 5]}</answer>", p).score == 3.0
    assert REWARDS["gui_action"]("x", Prompt("p", "q")).score is None


def test_iou_of_exactly_half_is_a_match():  # issue 9: COCO and VLM-R1 count IoU >= 0.5
    gold = {"boxes": [[0, 0, 10, 10]]}
    half = "<answer>[[0, 0, 10, 5]]</answer>"  # IoU = 50 / 100 = 0.5 exactly
    assert box_iou([0, 0, 10, 5], [0, 0, 10, 10]) == 0.5
    assert run("detection", half, metadata=gold).score == 1.0
    assert run("detection", half, metadata=gold, mode="map").score == pytest.approx(0.1)  # only the 0.5 threshold
    assert run("detection", "<answer>[[0, 0, 10, 4.9]]</answer>", metadata=gold).score == 0.0
    assert run("iou", "<answer>[0, 0, 10, 5]</answer>", metadata={"box": [0, 0, 10, 10]}, threshold=0.5).score == 1.0
