"""Process rewards (T-PR1 and ours), step-to-token mapping, and a tiny local PRM end to end."""

from __future__ import annotations

import string

import pytest

from reinforced.rewards import REWARDS, step_token_rewards, token_char_ends
from reinforced.types import Prompt, StepScore

R1VL = (
    "### Image Description: a right triangle with legs 5 cm and 12 cm\n"
    "### Rationales: Pythagorean theorem\n"
    "### Let's think step by step.\n"
    "### Step 1: legs are 5 cm and 12 cm\n"
    "### Step 2: use the Pythagorean theorem\n"
    "### Step 3: 25 + 144 = 169\n"
    "### The final answer is: x = 13"
)
KEYS = {"Steps": [["5 cm", "5cm"], "pythagorean", ["x = 13", "x=13"], "169"]}


def run(name, text, answer=None, question="q", **kw):
    meta = kw.pop("metadata", {})
    return REWARDS[name](text, Prompt("p", question, answer=answer, metadata=meta), **kw)


def test_step_rar_rvr_vector():  # T-PR1
    rar = run("step_rar", R1VL, answer="x = 13", metadata={"key_steps": KEYS})
    assert rar.components["key_steps"] == pytest.approx(0.75)
    assert rar.score == pytest.approx(1.075)
    assert run("step_rvr", R1VL).score == 1.0
    assert rar.score + run("step_rvr", R1VL).score == pytest.approx(2.075)
    wrong = run("step_rar", R1VL, answer="14", metadata={"key_steps": KEYS})
    assert wrong.score == pytest.approx(0.075)  # alpha * k_ps is kept for wrong answers (as implemented)


def test_step_rvr_failures():
    assert run("step_rvr", R1VL.replace("### Step 2:", "### Step 3:").replace("### Step 3: 25", "### Step 4: 25")).score == 0.0
    assert run("step_rvr", R1VL.replace("### Rationales: Pythagorean theorem\n", "")).score == 0.0
    moved = R1VL.replace("### The final answer is: x = 13", "") + ""
    moved = "### The final answer is: x = 13\n" + moved
    assert run("step_rvr", moved).score == 0.0


def test_step_rar_emits_steps_summing_to_alpha_kps():
    r = run("step_rar", R1VL, answer="x = 13", metadata={"key_steps": KEYS}, emit_steps=True)
    assert len(r.steps) == 3
    assert [s.score for s in r.steps] == pytest.approx([0.025, 0.025, 0.025])
    assert sum(s.score for s in r.steps) == pytest.approx(0.1 * 0.75)
    assert R1VL[r.steps[1].start:r.steps[1].end].startswith("### Step 2:")


def test_reasoning_steps():
    assert run("reasoning_steps", "<think>Step 1: a\nStep 2: b\nStep 3: c</think><answer>1</answer>").score == 1.0
    assert run("reasoning_steps", "<think>First, x. Finally, y.</think>").score == pytest.approx(2 / 3)
    assert run("reasoning_steps", "<think>just do it</think>").score == 0.0


def test_consistency():
    assert run("consistency", "<think>3 + 4 = 7</think><answer>7</answer>").score == 1.0
    assert run("consistency", "<think>so the answer is 7</think><answer>8</answer>").score == 0.0
    assert run("consistency", "<think>hmm</think><answer>8</answer>").score == 0.0
    assert run("consistency", "<think>hmm</think><answer>8</answer>", missing=0.5).score == 0.5
    assert run("consistency", "<think>3 + 4 = 7</think><answer>7</answer>", answer="8", only_if_correct=True).score == 0.0
    assert run("consistency", "<think>I pick \\boxed{B}</think><answer>B</answer>", answer="B", only_if_correct=True).score == 1.0


def test_completeness():
    q = "A box holds 12 eggs. Tom buys 3 boxes and breaks 5. How many are left?"
    assert run("completeness", "<think>12 * 3 = 36, 36 - 5 = 31</think><answer>31</answer>", question=q).score == 1.0
    assert run("completeness", "<think>12 * 3 = 36</think><answer>36</answer>", question=q).score == pytest.approx(2 / 3)
    assert run("completeness", "<think>x</think>", question="What colour is it?").score is None
    assert run("completeness", "<think>7</think>", question="q", metadata={"quantities": [7, 8]}).score == 0.5


def test_grounded_citation():
    meta = {"image_size": (100, 100), "objects": [{"box": [0, 0, 50, 50], "label": "dog"},
                                                   {"box": [60, 60, 90, 90], "label": "cat"}]}
    ok = "<think>the dog at [0, 0, 48, 50] sits near the cat [60, 60, 88, 90]</think><answer>2</answer>"
    assert run("grounded_citation", ok, metadata=meta).score == 1.0
    mislabelled = "<think>the cat at [0, 0, 48, 50]</think>"
    assert run("grounded_citation", mislabelled, metadata=meta).score == 0.0
    outside = "<think>look at [90, 90, 150, 99] and [0, 0, 50, 50]</think>"
    assert run("grounded_citation", outside, metadata=meta).score == 0.5
    assert run("grounded_citation", "<think>no boxes</think>", metadata=meta).score is None
    # no labelled objects: only validity inside the image counts
    assert run("grounded_citation", "<think>[10, 10, 20, 20] [30, 30, 20, 40]</think>",
               metadata={"image_size": (50, 50)}).score == 0.5


def test_step_token_mapping():
    pieces = ["Step", " 1", ":", " a", "\n", "Step", " 2", ":", " b"]
    decode = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731
    ends = token_char_ends(list(range(len(pieces))), decode)
    text = decode(range(len(pieces)))
    steps = [StepScore(0, text.index("\n"), 0.5), StepScore(text.index("\n") + 1, len(text), -1.0)]
    assert step_token_rewards(steps, ends) == [0, 0, 0, 0.5, 0, 0, 0, 0, -1.0]
    assert step_token_rewards([StepScore(0, 99, 2.0)], ends)[-1] == 2.0
    assert step_token_rewards(steps, []) == []


def test_token_char_ends_slow_path():
    # per-token decodes that do not add up (a merged space) fall back to prefix decoding
    def decode(ids):
        return " ".join(["a", "b", "c"][i] for i in ids)
    assert token_char_ends([0, 1, 2], decode) == [1, 3, 5]


@pytest.fixture(scope="module")
def tiny_prm(tmp_path_factory):
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    chars = sorted(set(string.printable))
    vocab = {"[PAD]": 0, "[UNK]": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, num_labels=2, max_position_embeddings=256)
    path = tmp_path_factory.mktemp("prm")
    BertForSequenceClassification(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return str(path), tok


def test_prm_scores_prefixes_and_reaches_tokens(tiny_prm):
    import torch
    from transformers import AutoModelForSequenceClassification

    path, tok = tiny_prm
    prompt = Prompt("p", "2+3*4?")
    text = "Step 1: 3*4 = 12\n\nStep 2: 2 + 12 = 14\n\nSo 14."
    short = "Step 1: 14"
    batch = REWARDS["prm"].batch([text, short], [prompt, prompt], model=path)
    r = batch[0]
    assert [text[s.start:s.end] for s in r.steps] == ["Step 1: 3*4 = 12", "Step 2: 2 + 12 = 14", "So 14."]
    net = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        direct = [net(**tok(f"{prompt.question}\n\n{text[:s.end]}", return_tensors="pt")).logits.softmax(-1)[0, -1].item()
                  for s in r.steps]
    assert [s.score for s in r.steps] == pytest.approx(direct, abs=1e-5)  # padding does not change scores
    assert r.score == pytest.approx(min(direct), abs=1e-5)
    assert REWARDS["prm"](short, prompt, model=path).score == pytest.approx(batch[1].score, abs=1e-5)
    # the step rewards land on the last token of each step
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ends = token_char_ends(ids, lambda x: tok.decode(x))
    tokens = step_token_rewards(r.steps, ends)
    hot = [t for t, v in enumerate(tokens) if v != 0.0]
    assert [ends[t] for t in hot] == [s.end for s in r.steps]
    assert [tokens[t] for t in hot] == pytest.approx(direct, abs=1e-5)


def test_local_judge_generates_once_per_prompt(tiny_prm, tmp_path, monkeypatch):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from reinforced.rewards import judge as judge_mod

    _, tok = tiny_prm
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=512,
                     eos_token_id=0, bos_token_id=0, pad_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    calls = []
    real = judge_mod.local_generate
    monkeypatch.setattr(judge_mod, "local_generate", lambda *a: calls.append(a[1]) or real(*a))
    p = Prompt("p", "2+2?", answer="4")
    first = REWARDS["judge"].batch(["<answer>4</answer>", "<answer>4</answer>"], [p, p], model=str(tmp_path), max_tokens=4)
    again = REWARDS["judge"]("<answer>4</answer>", p, model=str(tmp_path), max_tokens=4)
    assert len(calls) == 1 and len(calls[0]) == 1  # one generation for two identical prompts, then the cache
    assert first[0] == first[1] == again
    assert first[0].score is None or 0.0 <= first[0].score <= 1.0
