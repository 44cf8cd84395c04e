"""Table-driven outcome, format and shaping rewards, with the vectors of rewards-and-paradigms.md sec. 8
and the leniency bugs of sec. 9 item 12 as regressions."""

from __future__ import annotations

import pytest

from reinforced.rewards import REWARDS, extract_answer, format_ok, math_equal
from reinforced.types import Prompt


def score(name, text, answer=None, choices=(), metadata=None, **params):
    prompt = Prompt("p", "q", answer=answer, choices=tuple(choices), metadata=metadata or {})
    return REWARDS[name](text, prompt, **params).score


# T-FMT: (response, lenient, strict, newline, boxed). Our lenient differs from the spec's regex column on
# two rows by design (sec. 9 item 12): the trailing newline is accepted, duplicated answer blocks rejected.
FMT = [
    ("<think>abc</think><answer>42</answer>", 1, 1, 0, 0),
    ("<think>abc</think>\n<answer>42</answer>", 1, 0, 0, 0),
    ("Sure! <think>abc</think><answer>42</answer>", 0, 0, 0, 0),
    ("<think>abc</think><answer>42</answer>\n", 1, 1, 0, 0),  # spec regex: 0 (bug fixed)
    ("<think>\nabc\n</think>\n<answer>\n42\n</answer>", 1, 0, 1, 0),
    ("<think>a</think><answer>1</answer><answer>2</answer>", 0, 0, 0, 0),  # spec regex: 1 (bug fixed)
    ("<think>abc</think> so \\boxed{42}.", 0, 0, 0, 1),
    ("<answer>42</answer>", 0, 0, 0, 0),
]


@pytest.mark.parametrize("text,lenient,strict,newline,boxed", FMT)
def test_format_table(text, lenient, strict, newline, boxed):
    assert [format_ok(text, m) for m in ("lenient", "strict", "newline", "boxed")] == [
        bool(lenient), bool(strict), bool(newline), bool(boxed)]
    assert score("format", text) == float(lenient)


def test_format_eos_and_answer_only_and_bad_mode():
    assert score("format", "<think>a</think><answer>1</answer><|im_end|>") == 1.0
    assert score("format", "<answer>1</answer>", mode="answer_only") == 1.0
    assert score("format", "<answer>1</answer><answer>2</answer>", mode="answer_only") == 0.0
    with pytest.raises(ValueError, match="unknown format mode 'weird'"):
        format_ok("x", "weird")


def test_tag_count_partial_credit():
    assert score("tag_count", "<think>a</think><answer>1</answer>") == 1.0
    assert score("tag_count", "<think>a</think>") == 0.5
    assert score("tag_count", "<think><think></think>") == 0.25


@pytest.mark.parametrize("text,expected", [
    ("<think>3 red and 45 blue.</think><answer>48</answer>", "48"),  # T-MV1: glued tags
    ("<answer>1</answer> then <answer> 2 </answer>", "2"),  # last block
    ("<answer>$\\boxed{60}$</answer>", "60"),  # T-LMM1 layout
    ("so \\boxed{\\frac{1}{2}} and \\boxed{3}", "3"),
    ("<answer>unclosed 5", None),
    ("the total is 12.", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_fallbacks():
    text = "First 3, then 4.\nSo it is 17"
    assert extract_answer(text, "last_number") == "17"
    assert extract_answer(text, "last_line") == "So it is 17"
    assert extract_answer(text, "whole") == text
    with pytest.raises(ValueError, match="unknown answer fallback 'end'"):
        extract_answer(text, "end")


@pytest.mark.parametrize("gold,text,expected", [
    ("5", "<think>3-4-5 triangle.</think> The hypotenuse is \\boxed{5}.", 1.0),  # T-MATH1
    ("5", "The hypotenuse is \\boxed{5}.", 1.0),  # T-MATH2 (format is a separate term)
    ("5", "<think>guess</think> \\boxed{6}", 0.0),  # T-MATH3
    ("5", "<think>x</think> \\boxed{\\frac{10}{2}}", 1.0),  # T-MATH4: Math-Verify semantics (pinned)
    ("5", "<think>x</think> no box", 0.0),  # T-MATH5
    ("48", "<answer>48</answer>", 1.0),  # T-MV1: parse() alone misses it
    ("3", "<think>I see 2 cubes and 1 sphere.</think><answer>3</answer>", 1.0),  # T-MV2
    ("$\\boxed{60}$", "<think>a</think><answer>$\\boxed{60}$</answer>", 1.0),  # T-LMM1
    ("$\\boxed{60}$", "<think>a</think><answer>60</answer>", 1.0),  # T-LMM3: bare number now found
    ("3", "<think>count</think><answer>3</answer>", 1.0),  # T-R1V1
    ("48", "<answer>48^\\circ</answer>", 1.0),
    ("48", "<answer>x = 48</answer>", 1.0),
    ("\\frac{1}{2}", "<answer>0.5</answer>", 1.0),
    ("2\\sqrt{3}", "<answer>\\sqrt{12}</answer>", 1.0),
    ("[1,2)", "<answer>[1, 2)</answer>", 1.0),
    ("(1,2]", "<answer>[1, 2)</answer>", 0.0),
    ("5", "<answer>5 cm</answer>", 1.0),
    ("1,234", "<answer>1234</answer>", 1.0),
    ("\\text{B}", "<answer>B</answer>", 1.0),
    ("7", "<answer>8</answer>", 0.0),
])
def test_math_answer(gold, text, expected):
    assert score("math_answer", text, gold) == expected


def test_math_answer_missing_gold_and_fallback():
    assert score("math_answer", "<answer>4</answer>", None) is None
    assert score("math_answer", "so the answer is 17", "17") == 0.0
    assert score("math_answer", "so the answer is 17", "17", fallback="last_number") == 1.0
    assert math_equal("50\\%", "50") is True


@pytest.mark.parametrize("pred,expected", [("10.3", 1.0), ("11", 0.75), ("12", 0.0), ("13", 0.0)])
def test_numeric_reason_rft_vectors(pred, expected):  # T-TOL
    assert score("numeric", f"<answer>{pred}</answer>", "10", rel_tol=0.05, soft_tol=0.2) == pytest.approx(expected)


def test_numeric_gold_zero_and_defaults():  # sec. 9 item 12: Reason-RFT fails at gt = 0
    assert score("numeric", "<answer>0</answer>", "0", rel_tol=0.05, soft_tol=0.2) == 1.0
    assert score("numeric", "<answer>0.5</answer>", "0", rel_tol=0.05, soft_tol=0.2) == 0.0
    assert score("numeric", "<answer>0.0000001</answer>", "0") == 1.0
    assert score("numeric", "<answer>10.01</answer>", "10") == 0.0
    assert score("numeric", "<answer>3/4</answer>", "0.75") == 1.0
    assert score("numeric", "<answer>none</answer>", "1") == 0.0
    assert score("numeric", "<answer>1</answer>", "abc") is None


def test_count():
    assert score("count", "<answer>3</answer>", "3") == 1.0
    assert score("count", "<answer>three</answer>", "3") == 1.0
    assert score("count", "<answer>4</answer>", "3") == 0.0
    assert score("count", "<answer>4</answer>", "4.5") is None
    assert score("count", "<answer>4</answer>", "5", partial=True) == pytest.approx(0.8)
    assert score("count", "<answer>2.5</answer>", "3") == 0.0


@pytest.mark.parametrize("text,expected", [  # T-MED, gold B: our verdicts fix MedVLM-R1's 0.5 / 0 cases
    ("B", 1.0), ("b", 1.0), ("B.", 1.0), ("B) 7", 1.0), ("C", 0.0), ("(B) Chondral lesion", 1.0),
    ("The answer is B", 1.0), ("A or B", 0.0), ("", 0.0),
])
def test_choice_letters(text, expected):
    assert score("choice", f"<answer>{text}</answer>", "B") == expected


def test_choice_multi_select_and_option_text():
    assert score("choice", "<answer>C, A</answer>", "A,C") == 1.0  # T-MC2: order-insensitive
    assert score("choice", "<answer>A</answer>", "A,C") == 0.0
    assert score("choice", "<answer>4</answer>", "C", choices=("6", "3", "4", "2")) == 1.0
    assert score("choice", "<answer>E</answer>", "C", choices=("6", "3", "4", "2")) == 0.0


@pytest.mark.parametrize("text,gold,expected", [
    ("yes", "Yes", 1.0), ("No, it is not.", "no", 1.0), ("I know", "no", 0.0),  # "know" is not "no"
    ("true", "yes", 1.0), ("incorrect", "no", 1.0), ("maybe", "yes", 0.0), ("nothing", "no", 0.0),
])
def test_yes_no(text, gold, expected):
    assert score("yes_no", f"<answer>{text}</answer>", gold) == expected


def test_exact_match():
    assert score("exact_match", "<answer>  The  Eiffel Tower. </answer>", "the eiffel tower") == 1.0
    assert score("exact_match", "<answer>Paris</answer>", "paris", case_sensitive=True) == 0.0
    assert score("exact_match", "<answer></answer>", "") is not None and score("exact_match", "x", "a") == 0.0


def test_label_bugs_and_synonyms():  # T-CLS1: Visual-RFT's 1/1/1 are regressions here
    for text in ("boeing_737-800", "737", ""):
        assert score("label", f"<answer>{text}</answer>", "Boeing 737") == 0.0
    assert score("label", "<answer>boeing_737</answer>", "Boeing 737") == 1.0
    assert score("label", "<answer>B737</answer>", "Boeing 737", synonyms={"boeing 737": ["b737"]}) == 1.0
    assert score("label", "<answer>kitty</answer>", "cat", metadata={"synonyms": ["kitty"]}) == 1.0
    # T-CLS2: Jaccard for multi-label
    assert score("label", "<answer>dog, person</answer>", "dog, cat", multi=True) == pytest.approx(1 / 3)


def test_expression_equals_target():
    meta = {"numbers": [30, 100, 93], "target": 23}
    assert score("expression_equals_target", "<answer>93 + (30 - 100)</answer>", "23", metadata=meta) == 1.0
    assert score("expression_equals_target", "<answer>93 - 100 + 30 = 23</answer>", "23", metadata=meta) == 1.0
    assert score("expression_equals_target", "<answer>93 + 30 - 100 + 0</answer>", "23", metadata=meta) == 0.0
    assert score("expression_equals_target", "<answer>93 - 70</answer>", "23", metadata=meta) == 0.0
    assert score("expression_equals_target", "<answer>__import__('os')</answer>", "23", metadata=meta) == 0.0
    m24 = {"numbers": [1, 3, 4, 6]}
    assert score("expression_equals_target", "<answer>6 / (1 - 3/4)</answer>", "24", metadata=m24) == 1.0
    assert score("expression_equals_target", "<answer>6 / (1 - 1)*3*4</answer>", "24", metadata=m24) == 0.0
    assert score("expression_equals_target", "<answer>6 × 4 × (3 - 1)</answer>", "48", metadata=m24) == 1.0
    assert score("expression_equals_target", "<answer>1+3+4+6</answer>", "24", metadata={}) is None


def test_grid():
    meta = {"puzzle": "3102200002100320"}
    gold = "3142243142131324"
    assert score("grid", f"<answer>{gold}</answer>", gold, metadata=meta) == 1.0
    assert score("grid", "<answer>[[3,1,4,2],[2,4,3,1],[4,2,1,3],[1,3,2,4]]</answer>", gold, metadata=meta) == 1.0
    bad = "3142243142131342"  # last row swapped: columns break
    assert score("grid", f"<answer>{bad}</answer>", gold, metadata=meta) == 0.0
    other = "1234341221434321"  # a valid Sudoku that ignores the givens
    assert score("grid", f"<answer>{other}</answer>", gold, metadata=meta) == 0.0
    assert score("grid", "<answer>1234</answer>", gold, metadata=meta) == 0.0


def test_overlong_dapo_vectors():  # T-DAPO
    vals = [score("overlong", "", num_tokens=n, max_tokens=20480, cache_tokens=4096)
            for n in (16000, 16384, 18432, 20480, 20481)]
    assert vals == [0.0, 0.0, -0.5, -1.0, -1.0]
    assert 1.0 + score("overlong", "", num_tokens=18432, max_tokens=20480, cache_tokens=4096) == 0.5


def test_kimi_length_vector():  # T-KIMI
    lengths, correct = [100, 200, 300, 500], [1, 1, 0, 0]
    got = [score("kimi_length", "", num_tokens=n, correct=c, group_num_tokens=lengths) for n, c in zip(lengths, correct, strict=True)]
    assert got == pytest.approx([0.5, 0.25, 0.0, -0.5])
    assert score("kimi_length", "", num_tokens=5, correct=1, group_num_tokens=[5, 5]) == 0.0


def test_cosine_length_vectors():  # T-COS, and correctness really matters (VLM-R1 bug)
    right = [score("cosine_length", "", num_tokens=n, correct=1.0, max_tokens=1000) for n in (0, 250, 500, 1000)]
    wrong = [score("cosine_length", "", num_tokens=n, correct=0.0, max_tokens=1000) for n in (0, 500, 1000)]
    assert right == pytest.approx([1.0, 0.926777, 0.75, 0.5], abs=1e-6)
    assert wrong == pytest.approx([-1.0, -0.75, -0.5])
    assert score("cosine_length", "", num_tokens=990, correct=1.0, max_tokens=1000, exceed=-2.0) == -2.0


def test_repetition():
    assert score("repetition", "a b c d e f") == 0.0
    assert score("repetition", "x y z x y z x y z", ngram=3) == pytest.approx(-(1 - 3 / 7))
    assert score("repetition", "one") == 0.0


@pytest.mark.parametrize("gold,text,expected", [  # issue 9: hedges and prefixes; two boxes that are one list
    ("7", "\\boxed{5} \\boxed{7}", 0.0), ("5, 7", "\\boxed{5} and \\boxed{7}", 1.0),
    ("7", "<think>\\boxed{5}</think> so \\boxed{7}", 1.0), ("7", "<answer>$5$ or $7$</answer>", 0.0),
    ("10", "<answer>\\$10</answer>", 1.0), ("1000", "<answer>1 000</answer>", 1.0), ("1", "<answer>1 000</answer>", 0.0),
    ("1.5", "<answer>1,5</answer>", 0.0), ("1,-2", "<answer>1 or -2</answer>", 1.0), ("52_8", "<answer>52_9</answer>", 0.0),
])
def test_math_answer_hedges_and_separators(gold, text, expected):
    assert score("math_answer", text, gold) == expected


@pytest.mark.parametrize("text,expected", [("3 or 4", 0.0), ("3, 4", 0.0), ("x = 3 cm", 1.0), ("3\\pi", 0.0),
                                           ("3 + \\frac{1}{2}", 0.0), ("3^{2}", 0.0), ("3 m/s^2", 1.0)])
def test_numeric_reads_one_whole_number(text, expected):
    assert score("numeric", f"<answer>{text}</answer>", "3") == expected


@pytest.mark.parametrize("text,gold,expected", [("There are 3.", "3", 1.0), ("twenty-one", "21", 1.0),
                                                ("twenty one birds", "21", 1.0), ("3 or 4", "3", 0.0),
                                                ("3 or 4", "4", 0.0), ("3 dogs and 2 cats", "3", 0.0)])
def test_count_reads_the_one_stated_integer(text, gold, expected):
    assert score("count", f"<answer>{text}</answer>", gold) == expected


@pytest.mark.parametrize("text,gold,expected", [
    ("I think the answer is B.", "B", 1.0), ("I think the answer is B.", "I", 0.0), ("A or B", "A", 0.0),
    ("(A) or (B)", "B", 0.0), ("B Chondral lesion", "B", 1.0), ("I think the answer is (C)", "C", 1.0),
])
def test_choice_sentences_and_hedges(text, gold, expected):
    assert score("choice", f"<answer>{text}</answer>", gold, choices=tuple("ABCDEFGHIJ")) == expected


@pytest.mark.parametrize("text,gold,expected", [
    ("There are no dogs, so the answer is yes", "yes", 1.0), ("There are no dogs, so the answer is yes", "no", 0.0),
    ("yes and no", "yes", 0.0), ("yes and no", "no", 0.0), ("No. There are no dogs.", "no", 1.0),
])
def test_yes_no_reads_the_stated_answer(text, gold, expected):
    assert score("yes_no", f"<answer>{text}</answer>", gold) == expected
