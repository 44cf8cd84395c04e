"""The fused LM head + logprob + entropy equals the plain computation (logits, log-softmax) in value and in
every gradient, on random inputs and through ``completion_logprobs`` on tiny text models and VLMs."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from reinforced.config import ModelConfig, TrainingConfig
from reinforced.models import Adapter, load_policy
from reinforced.models.tiny_vlm import build_tiny_vlm
from reinforced.training.fused_logprobs import fused_linear_logprobs
from reinforced.training.logprobs import completion_forward, completion_logprobs, fusable_head, token_logprobs
from reinforced.types import Prompt

TEXTS = ("<think>4", "12 circles</think>", "7 and more words")


def plain(h, w, b, y, tau, entropy_grad=True):
    logits = torch.nn.functional.linear(h, w, b)[None]  # [1, N, V]
    lp, ent = token_logprobs(logits, y[None], tau, with_entropy=True, entropy_grad=entropy_grad)
    return lp[0], ent[0]


def random_inputs(n=13, hid=8, vocab=29, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hid, generator=g, dtype=torch.float64).float().requires_grad_()
    w = (torch.randn(vocab, hid, generator=g) * 0.7).requires_grad_()
    b = (torch.randn(vocab, generator=g) * 0.3).requires_grad_() if bias else None
    y = torch.randint(0, vocab, (n,), generator=g)
    g_lp, g_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)
    return h, w, b, y, g_lp, g_ent


def grads(out, inputs, g_lp, g_ent):
    lp, ent = out
    loss = (lp * g_lp).sum() + (0.0 if g_ent is None else (ent * g_ent).sum())
    return torch.autograd.grad(loss, [x for x in inputs if x is not None])


def assert_close_normwise(got, want, tol, name="", floor=0.0):
    """|got - want| <= tol * max|want| + floor entrywise: a relative tolerance on the tensor's scale. Entrywise
    relative error is meaningless for entries that are sums of cancelling terms (gradients near 0)."""
    assert got.dtype == want.dtype or want.dtype == torch.float64, (got.dtype, want.dtype)
    err, scale = (got.double() - want.double()).abs().max().item(), want.abs().max().item()
    assert err <= tol * scale + floor, f"{name}: max error {err:.3g} > {tol:g} * {scale:.3g} + {floor:g}"


@pytest.mark.parametrize(("tau", "chunk", "bias"), [(1.0, 4, True), (0.7, 5, False), (1.3, 13, True),
                                                    (0.6, 1000, True)])
def test_values_and_gradients_equal_the_plain_computation(tau, chunk, bias):
    """fp32 fused vs float64 truth within 1e-6 of scale (the plain fp32 path is as far from it: 2e-6 apart)."""
    h, w, b, y, g_lp, g_ent = random_inputs(bias=bias)
    exact = [x.detach().double().requires_grad_() if x is not None else None for x in (h, w, b)]
    truth = plain(*exact, y, tau)
    ref = plain(h, w, b, y, tau)
    out = fused_linear_logprobs(h, w, b, y, tau, with_entropy=True, entropy_grad=True, chunk_size=chunk)
    got_grads = grads(out, (h, w, b), g_lp, g_ent)
    for got, want, exact_value in zip(
        [*out, *got_grads], [*ref, *grads(ref, (h, w, b), g_lp, g_ent)],
        [*truth, *grads(truth, exact, g_lp.double(), g_ent.double())], strict=True,
    ):
        assert_close_normwise(got, exact_value, 1e-6)
        assert_close_normwise(got, want, 2e-6)


def test_entropy_without_gradient_is_a_detached_metric():
    h, w, b, y, g_lp, _ = random_inputs()
    lp, ent = fused_linear_logprobs(h, w, b, y, 0.8, with_entropy=True, entropy_grad=False, chunk_size=3)
    assert lp.requires_grad and not ent.requires_grad
    ref = plain(h, w, b, y, 0.8, entropy_grad=False)
    torch.testing.assert_close(ent, ref[1], rtol=1e-6, atol=1e-6)
    for got, want in zip(grads((lp, ent), (h, w, b), g_lp, None), grads(ref, (h, w, b), g_lp, None), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert fused_linear_logprobs(h, w, b, y)[1] is None


def test_tied_weight_accumulates_both_gradients():
    """The head weight is also the embedding: its gradient is the sum of both uses, as with nn.Linear."""
    h, w, _, y, g_lp, g_ent = random_inputs(n=7, vocab=11)
    ids = torch.randint(0, 11, (7,), generator=torch.Generator().manual_seed(3))

    def run(fused):
        w.grad = None
        x = torch.tanh(w[ids] + h)  # embedding lookup with the same weight
        out = (fused_linear_logprobs(x, w, None, y, 0.9, True, True, chunk_size=2) if fused
               else plain(x, w, None, y, 0.9))
        ((out[0] * g_lp).sum() + (out[1] * g_ent).sum()).backward()
        return w.grad.clone()

    torch.testing.assert_close(run(True), run(False), rtol=1e-6, atol=1e-6)


def test_bf16_autocast_matches_the_plain_path_under_autocast():
    """Under autocast both compute the logits with a bf16 matmul and the softmax in float32."""
    h, w, b, y, g_lp, g_ent = random_inputs(n=9, hid=16, vocab=40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = plain(h, w, b, y, 0.7)
        out = fused_linear_logprobs(h, w, b, y, 0.7, True, True, chunk_size=4)
    assert out[0].dtype == torch.float32
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-5)  # same bf16 logits, fp32 after
    torch.testing.assert_close(out[1], ref[1], rtol=1e-5, atol=1e-5)
    # the gradients go through bf16 matmuls: equal to bf16 rounding (the plain path rounds dW once more)
    for got, want in zip(grads(out, (h, w, b), g_lp, g_ent), grads(ref, (h, w, b), g_lp, g_ent), strict=True):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_bad_input_is_named():
    h, w, b, y, _, _ = random_inputs()
    with pytest.raises(ValueError, match="temperature"):
        fused_linear_logprobs(h, w, b, y, 0.0)
    with pytest.raises(ValueError, match="targets"):
        fused_linear_logprobs(h, w, b, y[:-1])
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_logprobs(h, w, b, y, chunk_size=0)


# ---- through completion_logprobs on tiny models ----------------------------------------------------------



def forward_and_grads(model, adapter, batch, share, fused, with_hidden=False):
    model.zero_grad()
    lp, ent, hidden = completion_forward(model, adapter, batch, temperature=0.7, with_entropy=True,
                                         share_prefix=share, entropy_grad=True, with_hidden=with_hidden,
                                         fused=fused)
    loss = lp.sum() + 0.1 * ent.sum() + (0.0 if hidden is None else 0.01 * hidden.sum())
    loss.backward()
    return {"logprobs": lp.detach(), "entropy": ent.detach(),
            **{name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}}


def assert_fused_equals_plain(model, adapter, batch, with_hidden=False):
    model.float()
    assert fusable_head(model) is model.get_output_embeddings()
    for share in (False, True):
        plain_out = forward_and_grads(model, adapter, batch, share, fused=False, with_hidden=with_hidden)
        fused_out = forward_and_grads(model, adapter, batch, share, fused=True, with_hidden=with_hidden)
        assert fused_out.keys() == plain_out.keys(), set(fused_out) ^ set(plain_out)
        for key, want in plain_out.items():
            # same fp32 numbers up to summation order (chunked dW, padding rows skipped). The floor is for
            # gradients that are exactly 0 in exact arithmetic and ~1e-8 rounding noise here (a key bias:
            # softmax ignores a shift shared by all keys)
            assert_close_normwise(fused_out[key], want, 1e-6, key, floor=1e-7)


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_text_models(make_batch, name):
    loaded = load_policy(ModelConfig(name_or_path=name))
    adapter = Adapter(loaded, "plain")
    prompts = [Prompt("a", "What is 1 + 2?"), Prompt("b", "What is 13 + 27? Explain each step.")]
    assert_fused_equals_plain(loaded.model, adapter, make_batch(adapter, prompts, TEXTS), with_hidden=name == "tiny-llama")


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_vision_language_models(make_batch, family, tmp_path):
    build_tiny_vlm(family, tmp_path, seed=0)
    loaded = load_policy(ModelConfig(name_or_path=str(tmp_path)))
    adapter = Adapter(loaded, "plain")
    red, blue = Image.new("RGB", (32, 32), (200, 10, 10)), Image.new("RGB", (32, 32), (0, 100, 200))
    prompts = [Prompt("a", "<image> What color?", images=(red,)), Prompt("t", "Text only, a longer prompt."),
               Prompt("b", "Describe <image>", images=(blue,))]
    assert_fused_equals_plain(loaded.model, adapter, make_batch(adapter, prompts, TEXTS), with_hidden=family == "llava")


def test_bf16_autocast_through_a_model(make_batch):
    """Under training.autocast=bf16 both paths take bf16 logits and a float32 softmax: same logprobs to bf16
    matmul rounding, gradients to 2% of scale (bf16 has 8 mantissa bits)."""
    loaded = load_policy(ModelConfig(name_or_path="tiny-qwen2"))
    model, adapter = loaded.model, Adapter(loaded, "plain")
    batch = make_batch(adapter, [Prompt("a", "What is 1 + 2?"), Prompt("b", "What is 13 + 27?")], TEXTS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain_out = forward_and_grads(model, adapter, batch, share=True, fused=False)
        fused_out = forward_and_grads(model, adapter, batch, share=True, fused=True)
    assert fused_out["logprobs"].dtype == torch.float32
    assert fused_out.keys() == plain_out.keys()
    assert_close_normwise(fused_out["logprobs"], plain_out["logprobs"], 1e-3)
    assert_close_normwise(fused_out["entropy"], plain_out["entropy"], 1e-3)
    for key, want in plain_out.items():
        assert_close_normwise(fused_out[key], want, 2e-2, key)


def test_fused_path_never_runs_the_full_head_and_unfusable_heads_fall_back(make_batch):
    loaded = load_policy(ModelConfig(name_or_path="tiny-llama"))
    model, adapter = loaded.model, Adapter(loaded, "plain")
    batch = make_batch(adapter, [Prompt("a", "What is 1 + 2?")], TEXTS)

    def refuse(*_):
        raise AssertionError("the LM head module ran: full logits were materialised")

    hook = model.get_output_embeddings().register_forward_hook(refuse)
    for share in (False, True):
        lp, _ = completion_logprobs(model, adapter, batch, share_prefix=share)
        assert torch.isfinite(lp).all() and (lp[batch.completion_mask] < 0).all()
    with pytest.raises(AssertionError, match="materialised"):
        completion_logprobs(model, adapter, batch, fused=False)
    hook.remove()
    model.config.final_logit_softcapping = 30.0  # applied in the model's forward, after the head
    assert fusable_head(model) is None
    with pytest.raises(AssertionError, match="materialised"):  # so the full-logits path runs
        model.get_output_embeddings().register_forward_hook(refuse)
        completion_logprobs(model, adapter, batch)


def test_config_switch_defaults_on():
    assert TrainingConfig().fused_logprobs is True
    assert TrainingConfig(fused_logprobs=False).fused_logprobs is False
