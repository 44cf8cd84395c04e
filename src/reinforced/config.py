"""The whole run configuration: typed, frozen, validated, one docstring per field.

A run is configured by a YAML file plus dotted command-line overrides::

    reinforced train configs/smollm2_arithmetic_grpo.yaml algorithm.kl.coef=0.04 training.max_steps=20

Every default lives here (or, for algorithm coefficients, in the preset that cites its paper). Unknown
keys and bad values are errors that name the key, the value and the valid choices; clashing settings
are errors, never silent overrides.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration problem, with a message that names the key and what would be valid."""


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class RunConfig(Section):
    name: str = "run"
    """Run name; outputs go to ``<output_dir>/<name>/``."""
    output_dir: str = "runs"
    """Parent directory of run directories."""
    seed: int = 0
    """Seed for data sampling, rollout sampling and model initialisation of new heads."""
    device: str = "auto"
    """Where the models run: ``auto`` (the first CUDA GPU when there is one, else the CPU), ``cpu``, ``cuda``,
    ``cuda:N``."""
    num_threads: int | None = Field(None, ge=1)
    """CPU threads for torch (None: torch's default, one per core). 1 keeps tiny models fast and steady
    when other jobs share the cores (oversubscribed OpenMP threads can slow small ops tenfold)."""


class LoraConfig(Section):
    """LoRA adapters through PEFT (Hu et al. 2021, arXiv 2106.09685): W + (alpha / r) B A on the named layers."""

    r: int = Field(16, ge=1)
    """Rank of the update B A."""
    alpha: float = Field(32.0, gt=0)
    """Scale numerator: the update is multiplied by ``alpha / r``."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter's input during training."""
    target_modules: tuple[str, ...] | None = None
    """Module names (PEFT's suffix match) that get adapters; None: the attention and MLP projections of the
    language model (the vision tower of a VLM stays frozen unless named here)."""
    quantization: Literal["none", "4bit", "8bit"] = "none"
    """QLoRA (Dettmers et al. 2023, arXiv 2305.14314): load the frozen base in 4-bit NF4 or 8-bit through
    bitsandbytes, which needs a CUDA GPU (an error on CPU)."""


class ModelConfig(Section):
    name_or_path: str = "smollm2-135m-instruct"
    """A local Hugging Face folder, or a built-in name (``reinforced list models``)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Storage dtype of the trainable weights (keep float32 and use ``training.autocast`` for bf16 compute)."""
    gradient_checkpointing: bool = False
    """Moved to ``training.gradient_checkpointing`` (one switch); ``true`` here is an error saying so."""
    freeze_vision_tower: bool = False
    """Keep the vision encoder of a VLM frozen (only the language model and projector train)."""
    lora: LoraConfig | None = None
    """Train LoRA adapters instead of the full model (``{r, alpha, dropout, target_modules}``); the reference
    model is then the base with the adapter disabled, and checkpoints hold the adapter."""


    @model_validator(mode="after")
    def _one_checkpointing_switch(self) -> ModelConfig:
        if self.gradient_checkpointing:
            raise ValueError("model.gradient_checkpointing moved to training.gradient_checkpointing (the update "
                             "recomputes layers in the trainer's eval mode); set that instead")
        return self


class DataSource(Section):
    name: str | None = None
    """Name used in metrics (``eval/<name>/accuracy``); default: the task name or the file's set name."""
    path: str | None = None
    """A data file (JSONL, CSV, parquet, arrow), a folder holding the split (``<split>.jsonl``, a ``datasets``
    ``save_to_disk`` folder, hub-style ``data/<split>-00000-of-0000N.parquet``), or a built-in set name. A
    relative path resolves beside the config file first, then in the working directory (``load_config``)."""
    task: str | None = None
    """A procedural task name instead of a file (``reinforced list tasks``)."""
    split: str = "train"
    """For folders: which split to read (``<split>.*`` files, a ``DatasetDict`` split, parquet shards)."""
    weight: float = Field(1.0, gt=0)
    """Mixture weight when several sources are given."""
    limit: int | None = Field(None, ge=1)
    """Read at most this many rows (files), or the size of a procedural task's fixed pool."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Task parameters (difficulty, ...) or loader options (column mapping, ...)."""

    @model_validator(mode="after")
    def _one_kind(self) -> DataSource:
        if (self.path is None) == (self.task is None):
            raise ValueError("a data source needs exactly one of 'path' or 'task'")
        return self


class SamplerConfig(Section):
    name: str = "uniform"
    """Prompt sampler (``reinforced list samplers``): uniform, curriculum, staged, prioritized, ..."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Sampler parameters (schedule, floor, window, ...)."""


class DataConfig(Section):
    train: tuple[DataSource, ...] = (DataSource(task="arithmetic"),)
    """Training sources (files or procedural tasks), mixed by weight."""
    template: str = "think_answer"
    """Prompt template (``reinforced list templates``): how a question is put to the model."""
    sampler: SamplerConfig = SamplerConfig()
    """How prompts are drawn each step."""


class EvalConfig(Section):
    sets: tuple[DataSource, ...] = ()
    """Held-out sets; empty means no evaluation."""
    every_n_steps: int = Field(0, ge=0)
    """Evaluate every N training steps (0: only before and after training)."""
    max_prompts: int = Field(64, ge=1)
    """Prompts per set per evaluation."""
    num_samples: int = Field(1, ge=1)
    """Samples per prompt (pass@k uses them; accuracy is the greedy or first sample)."""
    temperature: float = Field(0.0, ge=0)
    """0 is greedy decoding."""
    max_new_tokens: int | None = Field(None, ge=1)
    """None: the rollout's max_new_tokens."""


class VLLMConfig(Section):
    """Settings of ``rollout.engine=vllm`` (``rollout/vllm_engine.py``); an error with any other engine."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights vLLM samples with; ``auto``: bfloat16 under ``training.autocast=bf16``, else float32."""
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    """Share of GPU memory vLLM may take (weights + KV cache); the rest stays for training (colocated)."""
    cpu_kv_cache_gib: int = Field(2, ge=1)
    """KV cache size on CPU (``VLLM_CPU_KVCACHE_SPACE``)."""
    max_model_len: int | None = Field(None, ge=1)
    """Context length vLLM plans for (None: the model's ``max_position_embeddings``)."""
    enforce_eager: bool = False
    """Skip torch.compile / CUDA graphs: faster start-up, slower sampling."""
    sleep: bool = True
    """Where vLLM has sleep mode (GPUs), free its memory between rollout and update (level 1)."""
    max_images_per_prompt: int = Field(4, ge=1)
    """Images per prompt vLLM budgets for (vision-language models)."""


class RolloutConfig(Section):
    engine: str = "builtin"
    """Rollout engine (``builtin``: KV cache, one prefill per prompt shared by its G samples; ``vllm``: vLLM's
    offline engine in the training process, the ``[vllm]`` extra; see the README)."""
    vllm: VLLMConfig = VLLMConfig()
    """vLLM settings (only with ``engine: vllm``)."""
    group_size: int = Field(8, ge=1)
    """G: completions sampled per prompt."""
    max_new_tokens: int = Field(64, ge=1)
    """Generation budget (L_max)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature for training rollouts."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling (1.0: off)."""
    top_k: int = Field(0, ge=0)
    """Top-k sampling (0: off)."""
    stop: tuple[str, ...] = ()
    """Extra stop strings (the tokenizer's EOS always stops)."""
    max_prompt_tokens: int = Field(1024, ge=1)
    """Prompts longer than this are an error naming the prompt."""
    length_schedule: tuple[tuple[int, int], ...] = ()
    """Progressive thinking length (Vision-R1's PTST, arXiv 2503.06749): ``[[from_step, max_new_tokens],
    ...]`` in increasing step order; before the first entry, ``max_new_tokens`` applies."""

    @model_validator(mode="after")
    def _vllm_settings_need_vllm(self) -> RolloutConfig:
        if self.engine != "vllm" and self.vllm != VLLMConfig():
            raise ValueError(f"rollout.vllm is set but rollout.engine={self.engine!r}; set rollout.engine=vllm "
                             "or drop rollout.vllm")
        return self

    @model_validator(mode="after")
    def _increasing_schedule(self) -> RolloutConfig:
        steps = [s for s, _ in self.length_schedule]
        if steps != sorted(set(steps)) or any(n < 1 for _, n in self.length_schedule):
            raise ValueError(f"length_schedule must list [from_step, max_new_tokens >= 1] with increasing steps, "
                             f"got {self.length_schedule}")
        return self

    def max_new_tokens_at(self, step: int) -> int:
        """The generation budget at RL step ``step`` (the length schedule's last entry at or before it).

        >>> RolloutConfig(max_new_tokens=64, length_schedule=((10, 128), (20, 256))).max_new_tokens_at(15)
        128
        """
        budget = self.max_new_tokens
        for start, tokens in self.length_schedule:
            if step >= start:
                budget = tokens
        return budget


class RewardTerm(Section):
    name: str
    """A reward in the registry (``reinforced list rewards``), a Python callable given to ``Trainer`` (saved by
    value in ``<run>/rewards/<name>.pkl``, restored when the run's config.yaml is loaded), or
    ``path/to/file.py:function`` (relative to the config file's folder, then the working directory) or
    ``package.module:function``: ``f(completions, prompts, **columns) -> list[float | None]`` or
    ``f(completion, prompt, **params) -> float | None`` (see ``rewards/custom.py``)."""
    weight: float = 1.0
    """Weight in the composed score."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Keyword parameters passed to the reward."""
    accuracy: bool = False
    """This term measures correctness: it feeds ``accuracy`` (evaluation, filters, curricula)."""


class RewardsConfig(Section):
    terms: tuple[RewardTerm, ...] = (
        RewardTerm(name="math_answer", accuracy=True),
        RewardTerm(name="format", weight=0.1),
    )
    """The default reward composition."""
    sets: dict[str, tuple[RewardTerm, ...]] = Field(default_factory=dict)
    """Named compositions a dataset row or task may select (``Prompt.reward_set``)."""
    timeout_s: float = Field(5.0, gt=0)
    """Per-completion time limit of each reward; a time-out scores None and counts as an error."""
    gate_accuracy_on_format: bool = False
    """Accuracy terms count only when the ``format`` term is satisfied."""
    max_error_frac: float = Field(0.5, gt=0, le=1)
    """Stop the run (after a checkpoint) when more than this fraction of a batch's rewards error."""


class AlgorithmConfig(Section):
    preset: str = "grpo"
    """Algorithm preset (``reinforced list algorithms``)."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Dotted overrides of the preset's spec, e.g. ``{"clip.eps_high": 0.28, "kl.coef": 0.0}``."""


class TrainingConfig(Section):
    max_steps: int = Field(20, ge=0)
    """RL steps (one rollout batch each)."""
    num_prompts: int = Field(4, ge=1)
    """P: prompts per RL step (the batch holds P*G samples)."""
    micro_batch_size: int = Field(8, ge=1)
    """Samples per forward/backward; does not change the gradient."""
    lr: float = Field(1e-6, gt=0)
    """Peak learning rate of AdamW."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Learning-rate decay after warm-up."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up, in optimiser steps."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Gradient clipping by global norm (None: off)."""
    max_consecutive_skips: int = Field(3, ge=1)
    """Stop the run after this many optimiser steps in a row were skipped for non-finite gradients."""
    autocast: Literal["none", "bf16"] = "none"
    """Mixed precision for forward/backward and rollout (bf16 is ~3x faster on AVX512-BF16 CPUs)."""
    fused_logprobs: bool = True
    """Apply the LM head in token chunks fused with the logprob/entropy (no [tokens, vocab] logits of the
    micro-batch; same numbers); false: the model's full logits (also used where the head is not fusable)."""
    release_memory: Literal["none", "trim", "mmap"] = "none"
    """Give freed memory back to the OS so peak RSS does not creep up step after step (Linux glibc only; a
    no-op elsewhere): ``trim`` calls ``malloc_trim`` before and after each update; ``mmap`` also fixes
    glibc's mmap threshold at 128 KiB from start-up (lowest RSS, slower steps). See docs/performance.md."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward instead of keeping them (Hugging Face's
    non-reentrant checkpointing): activation memory of a micro-batch drops from all layers to about one,
    for one extra forward; the training forward then runs the prompt once per row (no shared prefix)."""
    strategy: Literal["single", "ddp", "fsdp2"] = "single"
    """Data parallelism under ``torchrun``: ``single`` (one process), ``ddp`` (replicated weights, gradients
    summed once per optimiser step) or ``fsdp2`` (``fully_shard`` per decoder layer + root).
    ``num_prompts`` is the global batch: each of W ranks rolls out num_prompts / W of it."""
    checkpoint_every: int = Field(0, ge=0)
    """Write a checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many recent checkpoints to keep."""
    samples_per_step: int = Field(4, ge=0)
    """Rollouts (prompt, completion, reward components) saved per step under samples/."""
    report_to: tuple[Literal["tensorboard", "wandb", "mlflow"], ...] = ("tensorboard",)
    """Trackers that get every metrics row and the resolved config, besides metrics.jsonl (always written):
    ``tensorboard``, ``wandb``, ``mlflow`` (pip extras ``wandb`` / ``mlflow``; docs/tracking.md). ``[]``: none.
    The older ``training.tensorboard: true|false`` still loads as this list with / without tensorboard."""
    progress_every: int = Field(10, ge=1)
    """Without a terminal (CI, nohup, a cluster's log file) print one plain progress line every N steps."""

    @model_validator(mode="before")
    @classmethod
    def _tensorboard_alias(cls, data: Any) -> Any:
        """``tensorboard: true|false`` (older configs) means report_to with / without tensorboard; setting
        both is allowed only when they agree."""
        if not isinstance(data, dict) or "tensorboard" not in data:
            return data
        data = dict(data)
        flag = data.pop("tensorboard")
        if not isinstance(flag, bool):
            raise ValueError(f"training.tensorboard must be true or false, got {flag!r}")
        if "report_to" not in data:
            data["report_to"] = ["tensorboard"] if flag else []
        elif flag != ("tensorboard" in (data["report_to"] or ())):
            raise ValueError(f"training.tensorboard={str(flag).lower()} clashes with training.report_to="
                             f"{list(data['report_to'] or ())}; drop training.tensorboard and list the trackers "
                             "in training.report_to")
        return data

    @model_validator(mode="after")
    def _distinct_trackers(self) -> TrainingConfig:
        if len(set(self.report_to)) != len(self.report_to):
            raise ValueError(f"training.report_to lists a tracker twice: {list(self.report_to)}")
        return self


class SFTConfig(Section):
    """Supervised fine-tuning (``reinforced sft``, stages of kind ``sft``): teacher-forced cross-entropy on the
    answer tokens only (``training/sft.py``). Each step draws ``training.num_prompts`` rows; the optimiser,
    learning-rate schedule, micro-batches, checkpoints and trackers are those of ``training``."""

    targets: Literal["row", "trace"] = "row"
    """Where each row's target text comes from: ``row``: the row's ``target`` field (a file's ``target`` column
    or ``meta.target``; a ``generate`` stage writes it); ``trace``: the procedural task's solver trace
    (``reinforced.training.sft.TRACES``: worked reasoning built from the task's own ground truth)."""


class GenerateConfig(Section):
    """Stages of kind ``generate`` (rejection sampling / self-distillation) and ``filter`` (pass-rate band):
    sample ``num_samples`` completions for each of ``num_prompts`` prompts of ``data.train``, score them with
    ``rewards``, keep what passes, and write the kept rows as JSONL for a later stage (``from_stage``)."""

    num_prompts: int = Field(64, ge=1)
    """Prompts drawn from ``data.train`` (with its sampler)."""
    num_samples: int = Field(8, ge=1)
    """K: completions sampled per prompt (temperature, top-p and length budget from ``rollout``)."""
    keep_per_prompt: int = Field(1, ge=1)
    """generate: at most this many passing completions kept per prompt (distinct texts)."""
    order: Literal["shortest", "score"] = "shortest"
    """generate: which passing completions are kept first: the shortest, or the highest composed reward."""
    well_formed: bool = True
    """generate: keep only completions that stopped by themselves (not truncated) and, where a ``format``
    reward term ran, scored above 0 on it."""
    replay: tuple[DataSource, ...] = ()
    """generate: general data mixed into the kept rows against forgetting (Curr-ReFT's rejection-sampled
    self-improvement)."""
    replay_targets: Literal["row", "trace"] = "row"
    """generate: the replay rows' targets, as ``sft.targets``: a file's ``target`` field or a task's solver trace."""
    replay_share: float = Field(0.0, ge=0, lt=1)
    """generate: the share of the written rows that are replay rows (0.25: one replay row per three kept)."""
    pass_band: tuple[float, float] = (0.0, 1.0)
    """filter: keep prompts whose pass rate p satisfies low < p < high (Reason-RFT's / ORZ's curation)."""


class UntilRule(Section):
    metric: str
    """A held-out metric of the stage, ``eval/<set>/accuracy`` (checked every ``eval.every_n_steps``)."""
    at_least: float
    """The stage ends at the first evaluation where the metric is at least this."""
    max_steps: int = Field(ge=1)
    """... or after this many steps, whichever comes first."""


class AdvanceRule(Section):
    """When a stage ends and the next begins: after ``steps``, or ``until`` a held-out metric reaches a level."""

    steps: int | None = Field(None, ge=1)
    """The stage's number of steps (its ``training.max_steps``)."""
    until: UntilRule | None = None
    """``{metric: eval/<set>/accuracy, at_least: x, max_steps: N}``."""

    @model_validator(mode="after")
    def _one_rule(self) -> AdvanceRule:
        if (self.steps is None) == (self.until is None):
            raise ValueError("an advance rule needs exactly one of 'steps' or 'until'")
        return self


class BudgetRule(Section):
    """Skywork R1V's adaptive thinking budget (arXiv 2504.05599, sec. 3.2): later stages' length budget set from
    the measured length of this stage's correct samples, ``clamp(ceil(factor * quantile), min_tokens, max_tokens)``
    (``training/pipeline.py``'s ``adaptive_budget``)."""

    quantile: float = Field(0.9, gt=0, le=1)
    """Which quantile of the correct samples' lengths (tokens) is measured (0.9: their p90)."""
    factor: float = Field(1.5, gt=0)
    """The budget is this multiple of the measured quantile."""
    min_tokens: int = Field(8, ge=1)
    """Lower bound of the budget (and the budget when no sample was correct: see ``max_tokens``)."""
    max_tokens: int = Field(1024, ge=1)
    """Upper bound of the budget."""

    @model_validator(mode="after")
    def _ordered(self) -> BudgetRule:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"next_budget: min_tokens={self.min_tokens} exceeds max_tokens={self.max_tokens}")
        return self


STAGE_SECTIONS = ("data", "eval", "rollout", "rewards", "algorithm", "training", "sft", "generate")
"""The sections a stage may override; ``run`` and ``model`` are the pipeline's (weights pass between stages)."""


class StageConfig(Section):
    """One stage of a pipeline (``stages:``): its kind, its advance rule and its overrides of the base config
    (deep-merged: mappings merge key by key, lists replace; ``algorithm: {kl.coef: 0}`` means an override)."""

    kind: str
    """What the stage does (``training/pipeline.py``'s ``STAGES``): ``sft``, ``rl``, ``generate`` or ``filter``."""
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    """Label in metrics and the stage's folder ``stages/<i>-<name>/`` (default: the kind)."""
    advance: AdvanceRule | None = None
    """When the stage ends (None: after the stage's ``training.max_steps``)."""
    next_budget: BudgetRule | None = None
    """Set ``rollout.max_new_tokens`` of every later stage that does not set it itself from the length of this
    stage's correct samples (a stage kind that samples: ``generate``, ``filter``)."""
    data: dict[str, Any] | None = None
    """Overrides of ``data`` (a source ``{from_stage: k}`` reads the rows stage k wrote)."""
    eval: dict[str, Any] | None = None
    """Overrides of ``eval``."""
    rollout: dict[str, Any] | None = None
    """Overrides of ``rollout``."""
    rewards: dict[str, Any] | None = None
    """Overrides of ``rewards``."""
    algorithm: dict[str, Any] | None = None
    """Overrides of ``algorithm``."""
    training: dict[str, Any] | None = None
    """Overrides of ``training``."""
    sft: dict[str, Any] | None = None
    """Overrides of ``sft``."""
    generate: dict[str, Any] | None = None
    """Overrides of ``generate``."""

    @property
    def label(self) -> str:
        return self.name or self.kind


class Config(Section):
    run: RunConfig = RunConfig()
    """Where outputs go and the seed."""
    model: ModelConfig = ModelConfig()
    """The policy model."""
    data: DataConfig = DataConfig()
    """Training prompts."""
    eval: EvalConfig = EvalConfig()
    """Held-out evaluation."""
    rollout: RolloutConfig = RolloutConfig()
    """Sampling of completions."""
    rewards: RewardsConfig = RewardsConfig()
    """Reward composition."""
    algorithm: AlgorithmConfig = AlgorithmConfig()
    """Policy-optimisation algorithm."""
    training: TrainingConfig = TrainingConfig()
    """Optimisation and bookkeeping."""
    sft: SFTConfig = SFTConfig()
    """Supervised fine-tuning (``reinforced sft``, ``sft`` stages)."""
    generate: GenerateConfig = GenerateConfig()
    """Rejection sampling and pass-rate filtering (``generate`` / ``filter`` stages)."""
    stages: tuple[StageConfig, ...] = ()
    """A pipeline (``training/pipeline.py``): stages run in order in one run directory, each starting from the
    previous stage's weights; empty: one RL run of this config."""

    @model_validator(mode="after")
    def _quantized_base_needs_no_bf16_copy(self) -> Config:
        lora = self.model.lora
        if lora is not None and lora.quantization != "none" and self.training.autocast == "bf16":
            raise ValueError(f"model.lora.quantization={lora.quantization} with training.autocast=bf16: the "
                             "rollout's bf16 weight copy would dequantize the base; QLoRA already computes in "
                             "bf16, so set training.autocast=none")
        if lora is not None and self.training.strategy == "fsdp2":
            # PEFT's adapter save and the engine's merged-weight sync read whole tensors; under FSDP2 they are
            # DTensor shards. Adapters are small: data parallelism with full copies costs little.
            raise ValueError("model.lora with training.strategy=fsdp2 is not supported: LoRA adapters are saved "
                             "and synced as whole tensors; use training.strategy=ddp")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------------------------------------
# Loading: YAML + dotted overrides, with errors that name the key.


def _fields_at(loc: Sequence[Any]) -> list[str]:
    """Field names of the section reached by ``loc`` (for "did you mean" suggestions)."""
    model: Any = Config
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            break
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _explain(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = [p for p in e["loc"] if not isinstance(p, int)]
        key = prefix + ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            valid = _fields_at(loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"unknown config key {key!r}{hint} valid keys here: {', '.join(valid)}")
        else:
            value = e.get("input")
            lines.append(f"bad value for {key!r}: {value!r}: {e['msg']}")
    return "\n".join(lines)


def parse_value(text: str) -> Any:
    """A CLI override value: YAML scalar/list/dict syntax (``0.04``, ``true``, ``[a, b]``, ``null``)."""
    return yaml.safe_load(text) if text != "" else ""


def apply_override(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted = "a.b.c"``.

    Inside ``algorithm.overrides`` and ``params`` mappings the rest of the key is kept dotted, so
    ``algorithm.clip.eps_high=0.28`` becomes ``{"algorithm": {"overrides": {"clip.eps_high": 0.28}}}``.
    """
    parts = dotted.split(".")
    if parts[0] == "algorithm" and len(parts) > 1 and parts[1] not in ("preset", "overrides"):
        tree.setdefault("algorithm", {}).setdefault("overrides", {})[".".join(parts[1:])] = value
        return
    node: Any = tree
    for part, nxt in zip(parts[:-1], parts[1:], strict=True):
        node = _child(node, part, dotted, make_list=nxt.isdigit())
    last = parts[-1]
    if isinstance(node, list):
        _child(node, last, dotted, make_list=False)  # validates the index
        node[int(last)] = value
    else:
        node[last] = value


def _child(node: Any, part: str, dotted: str, make_list: bool) -> Any:
    """Step into ``node[part]`` (a list index when ``part`` is a number), creating sections on the way."""
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise ConfigError(f"cannot set {dotted!r}: index {part!r} is not in a list of {len(node)} entries")
        return node[int(part)]
    child = node.get(part)
    if child is None:
        child = node[part] = [] if make_list else {}
    if not isinstance(child, (dict, list)):
        raise ConfigError(f"cannot set {dotted!r}: {part!r} holds {child!r}, not a section")
    return child


def build_config(tree: Mapping[str, Any]) -> Config:
    try:
        cfg = Config.model_validate(dict(tree))
    except ValidationError as err:
        raise ConfigError(_explain(err)) from None
    validate_cross_section(cfg)
    if cfg.stages:  # each stage's kind is known and its merged config valid, or the error names the stage
        from reinforced.training.pipeline import resolve_stages  # local: the registry of stage kinds

        resolve_stages(cfg)
    return cfg


# ----------------------------------------------------------------------------------------------------------
# Pipelines: a stage's config is the base config deep-merged with the stage's overrides.


def stage_dir(cfg: Config, index: int) -> Path:
    """``<run>/stages/<i>-<label>/``: the stage's own run directory (its checkpoints, samples, written data)."""
    return Path(cfg.run.output_dir) / cfg.run.name / "stages" / f"{index}-{cfg.stages[index].label}"


def stage_config(cfg: Config, index: int) -> Config:
    """The full config of stage ``index``: ``cfg`` (without ``stages``) deep-merged with the stage's overrides,
    its run directory ``stage_dir``, ``advance.steps`` / ``until.max_steps`` as ``training.max_steps``, and each
    data source ``{from_stage: k}`` replaced by the rows stage k wrote. Errors name the stage's keys.
    """
    stage, where = cfg.stages[index], f"stages.{index}."
    tree = cfg.to_dict()
    tree["stages"] = []
    for section in STAGE_SECTIONS:
        overrides = getattr(stage, section)
        if overrides:
            tree[section] = _merge(tree[section], _algorithm_shorthand(section, overrides))
    _resolve_from_stage(cfg, index, tree)
    folder = stage_dir(cfg, index)
    tree["run"].update(output_dir=str(folder.parent), name=folder.name)
    if stage.advance is not None:
        if stage.training and "max_steps" in stage.training:
            raise ConfigError(f"{where}advance and {where}training.max_steps both set the stage's length; keep one")
        steps = stage.advance.steps or stage.advance.until.max_steps  # type: ignore[union-attr]
        tree["training"]["max_steps"] = steps
    try:
        resolved = Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_explain(err, prefix=where)) from None
    try:
        validate_cross_section(resolved)
        _check_until(stage, resolved)
    except ConfigError as err:
        raise ConfigError(f"{where.rstrip('.')} ({stage.kind}): {err}") from None
    return resolved


def _merge(base: Any, over: Any) -> Any:
    """Mappings merge key by key (recursively); anything else (lists, scalars) replaces.

    >>> _merge({"a": {"x": 1, "y": 2}, "l": [1]}, {"a": {"y": 3}, "l": [4]})
    {'a': {'x': 1, 'y': 3}, 'l': [4]}
    """
    if isinstance(base, dict) and isinstance(over, Mapping):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return over


def _algorithm_shorthand(section: str, overrides: Mapping[str, Any]) -> Mapping[str, Any]:
    """``algorithm: {kl.coef: 0}`` in a stage means ``algorithm: {overrides: {kl.coef: 0}}`` (as on the CLI)."""
    if section != "algorithm":
        return overrides
    direct = {k: v for k, v in overrides.items() if k in ("preset", "overrides")}
    extra = {k: v for k, v in overrides.items() if k not in direct}
    if extra:
        direct["overrides"] = {**direct.get("overrides", {}), **extra}
    return direct


def _resolve_from_stage(cfg: Config, index: int, tree: dict[str, Any]) -> None:
    """Replace ``{from_stage: k}`` data sources by ``stages/<k>-<label>/data.jsonl`` (rows stage k writes)."""
    for j, source in enumerate(tree["data"]["train"]):
        if not isinstance(source, dict) or "from_stage" not in source:
            continue
        k = source.pop("from_stage")
        if not isinstance(k, int) or not 0 <= k < index:
            raise ConfigError(f"stages.{index}.data.train.{j}.from_stage: {k!r} must name an earlier stage "
                              f"(0..{index - 1})")
        source.setdefault("name", cfg.stages[k].label)
        source["path"] = str(stage_dir(cfg, k) / "data.jsonl")


def _check_until(stage: StageConfig, cfg: Config) -> None:
    until = stage.advance.until if stage.advance is not None else None
    if until is None:
        return
    names = [s.name or s.task or Path(s.path or "").stem for s in cfg.eval.sets]
    if not until.metric.startswith("eval/") or until.metric.split("/")[1] not in names:
        raise ConfigError(f"advance.until.metric={until.metric!r} is not a held-out metric of the stage; "
                          f"use eval/<set>/accuracy with a set of eval.sets ({', '.join(names) or 'none'})")
    if cfg.eval.every_n_steps == 0:
        raise ConfigError("advance.until needs eval.every_n_steps > 0 (the metric is checked at each evaluation)")


def packaged_configs() -> Path:
    """The folder of the recipes shipped in the package (``reinforced list configs``)."""
    from importlib import resources

    return Path(str(resources.files("reinforced") / "configs"))


def resolve_config_path(path: str | Path) -> Path:
    """A config file: ``path`` itself when it exists, else the packaged recipe of that name, so
    ``smollm2_arithmetic_grpo`` and ``configs/smollm2_arithmetic_grpo.yaml`` work from any directory."""
    p = Path(path)
    if p.is_file():
        return p
    packaged = packaged_configs() / (p.name if p.suffix in (".yaml", ".yml") else p.name + ".yaml")
    if packaged.is_file():
        return packaged
    names = ", ".join(q.stem for q in sorted(packaged_configs().glob("*.yaml")))
    raise ConfigError(f"config file not found: {path} (packaged recipes: {names})")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config and apply ``key=value`` overrides.

    ``path`` is a YAML file or the name of a packaged recipe (``resolve_config_path``); None means the
    defaults of this module, for Python and the command line alike. Reward files named in the config
    (``rewards.terms: [{name: my_rewards.py:fn}]``) and data paths (``data.train: [{path: rows.jsonl}]``,
    ``eval.sets``) resolve relative to the config file's folder, then the working directory, and are stored
    as absolute paths in the returned config (and so in a run's config.yaml). A run's config.yaml restores the
    Python rewards its Trainer saved (``<run>/rewards/<name>.pkl``).

    >>> load_config(None, ["training.max_steps=3"]).training.max_steps
    3
    """
    tree = read_config_tree(path)
    base_dirs = [] if path is None else [resolve_config_path(path).parent]
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. training.lr=1e-6)")
        key, _, text = item.partition("=")
        apply_override(tree, key.strip(), parse_value(text))
    resolve_reward_files(tree, base_dirs)
    resolve_data_paths(tree, base_dirs)
    return build_config(tree)


def read_config_tree(path: str | Path | None) -> dict[str, Any]:
    """The raw mapping of a config file or packaged recipe (``{}`` for None: the defaults), not validated."""
    if path is None:
        return {}
    path = resolve_config_path(path)
    loaded = _read_yaml(path)
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return loaded


def resolve_reward_files(tree: dict[str, Any], base_dirs: Sequence[Path]) -> None:
    """Make reward references in ``tree`` absolute and check that each loads with a valid signature.

    A missing file, module or function, or a function of the wrong shape, is a ConfigError naming the key.
    """
    rewards = tree.get("rewards")
    if not isinstance(rewards, dict):
        return
    lists = [("rewards.terms", rewards.get("terms"))]
    if isinstance(rewards.get("sets"), dict):
        lists += [(f"rewards.sets.{k}", v) for k, v in rewards["sets"].items()]
    for where, terms in lists:
        for i, term in enumerate(terms if isinstance(terms, list) else []):
            name = term.get("name") if isinstance(term, dict) else None
            if not isinstance(name, str):
                continue
            try:
                if ":" in name:
                    from reinforced.rewards.custom import check_term, resolve_file  # local: loads the rewards

                    term["name"] = resolve_file(name, base_dirs)
                    check_term(term["name"], term.get("params") or {})
                elif any((Path(d) / "rewards" / f"{name}.pkl").is_file() for d in base_dirs):
                    from reinforced.rewards.custom import restore_saved  # a Trainer run's Python reward

                    restore_saved(name, base_dirs)
            except (KeyError, ValueError) as err:
                raise ConfigError(f"{where}.{i}.name: {err}") from None


def resolve_data_paths(tree: dict[str, Any], base_dirs: Sequence[Path]) -> None:
    """Make the relative ``path`` of each ``data.train`` / ``eval.sets`` source absolute, resolved like reward
    files: beside the config file first, then the working directory. A path found in neither stays as
    written: a built-in set name (``gsm8k``), or a missing path the loader reports with the built-in names.
    The same holds for ``generate.replay`` and for each stage's ``data`` / ``eval`` / ``generate`` overrides."""
    stages = tree.get("stages")
    for node in [tree, *(s for s in (stages if isinstance(stages, list) else []) if isinstance(s, dict))]:
        _resolve_source_paths(node, base_dirs)


def _resolve_source_paths(node: Mapping[str, Any], base_dirs: Sequence[Path]) -> None:
    """The data paths of one config level (the base config or one stage's overrides)."""
    data, evals, gen = (node.get(k) for k in ("data", "eval", "generate"))
    groups = [data.get("train") if isinstance(data, dict) else None, evals.get("sets") if isinstance(evals, dict) else None,
              gen.get("replay") if isinstance(gen, dict) else None]
    for sources in groups:
        for source in sources if isinstance(sources, list | tuple) else ():
            if isinstance(source, dict) and isinstance(source.get("path"), str):
                source["path"] = _resolve_data_path(source["path"], base_dirs)


def _resolve_data_path(path: str, base_dirs: Sequence[Path]) -> str:
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    for base in (*base_dirs, Path.cwd()):
        if (Path(base) / p).exists():
            return str((Path(base) / p).resolve())
    return path


def _read_yaml(path: Path) -> Any:
    """The YAML document in ``path``; a syntax error becomes one line: ``file:line:column: problem``."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        context = err.context or ""
        if context and err.context_mark is not None and err.context_mark is not mark:
            context += f" (from line {err.context_mark.line + 1})"
        problem = "; ".join(str(p) for p in (context, err.problem) if p)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: YAML error: {' '.join(str(err).split())}") from None


def validate_cross_section(cfg: Config) -> None:
    """Checks that span sections; the algorithm's own clashes are checked by AlgorithmSpec.validate()."""
    from reinforced.algorithms import resolve_spec  # local: algorithms imports nothing from here

    try:
        spec = resolve_spec(cfg.algorithm.preset, cfg.algorithm.overrides)
    except (KeyError, ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None
    if cfg.rollout.group_size == 1:  # checked first: the batch-size clash below would hide it
        _check_single_sample_groups(spec)
    n = cfg.training.num_prompts * cfg.rollout.group_size
    if spec.num_mini_batches > n:
        raise ConfigError(
            f"algorithm.num_mini_batches={spec.num_mini_batches} exceeds the batch of "
            f"training.num_prompts*rollout.group_size={n} samples"
        )
    if not any(t.accuracy for t in cfg.rewards.terms):
        raise ConfigError("rewards.terms: mark one term with 'accuracy: true' (it defines correctness)")


def _check_single_sample_groups(spec: Any) -> None:
    """G=1 is an error for a group-relative baseline (every advantage is 0) and for dynamic sampling.

    Group-relative is measured, not listed: the estimator's advantages of one-sample groups are all zero,
    so an estimator added later is covered without editing a list here.
    """
    import torch

    from reinforced.algorithms import ADVANTAGES

    if spec.advantage in ADVANTAGES.names():
        probe = ADVANTAGES[spec.advantage](torch.tensor([[1.0], [0.0]]), **spec.advantage_params)  # P=2, G=1
        if not bool(probe.any()):
            raise ConfigError(
                f"rollout.group_size=1 with the advantage '{spec.advantage}' of preset '{spec.name}': its baseline "
                "is the group's own reward, so every advantage is 0 and nothing is learned; use "
                "rollout.group_size>=2, or a baseline over the batch (algorithm.preset=reinforce_pp) or a critic "
                "(algorithm.preset=ppo)")
    if spec.dynamic_sampling is not None:
        raise ConfigError("rollout.group_size=1 with dynamic sampling: every one-sample group is uniform and "
                          "would be dropped; use rollout.group_size>=2 or algorithm.dynamic_sampling=null")
