"""The claims ``reinforced bench claims`` tests: each a statement, its paper, and arms that differ in one knob.

Statements are quoted (one sentence) from the project's paper notes, which restate each paper's section
(the note and section are in ``source``). Every claim runs on the built-in tiny VLM (``reinforced-tiny-vlm``,
0.9 M parameters, shipped warmed on counting shapes by ``models/tiny_vlm.py``), whose RL step of 128 samples
takes about a second on two cores: that is what makes three seeds of every arm fit in about two hours. Text
claims use the text tasks it can learn within minutes (one-digit arithmetic, as the lmm_r1 recipe's first
stage). Its answers are short (about 8 tokens): claims about length can only show small effects here, and an
'inconclusive' says so. ``regime`` says how each claim's model is brought to where the knob can act.
"""

from __future__ import annotations

from reinforced.claims.spec import Arm, Claim, Measure

TEXT_EVAL = "eval.sets=[{task: arithmetic, params: {difficulty: 0.0}, limit: 100}]"
# The lmm_r1 recipe without its stages or its KL override: tiny VLM, text arithmetic at difficulty 0, 16 prompts x 8 samples, lr 3e-4.
TEXT_BASE = ("stages=[]", "algorithm.overrides={}", TEXT_EVAL, "eval.max_prompts=100", "training.max_steps=40", "run.num_threads=2",
             "rewards.terms=[{name: math_answer, accuracy: true}, {name: format, weight: 0.1}]")
TEXT_QUICK = ("training.max_steps=12", "eval.max_prompts=50")
WARMED = ("The built-in tiny VLM (warmed on counting shapes, shipped with the package) trained with RL on one-digit "
          "text arithmetic, the lmm_r1 recipe's first stage: it starts near 0-10 % and learns within 40 steps.")
ACC = "eval/arithmetic/accuracy"


def _text(name: str, **kw: object) -> Claim:
    """A claim on the tiny VLM's text arithmetic regime (the lmm_r1 recipe without stages)."""
    base = kw.pop("base", ())
    return Claim(name=name, config="lmm_r1", base=(*TEXT_BASE, *base), quick=TEXT_QUICK, regime=WARMED, **kw)  # type: ignore[arg-type]


CLAIMS: tuple[Claim, ...] = (
    _text(
        "dr_grpo_length",
        paper="Dr.GRPO (Liu et al., Understanding R1-Zero-Like Training)", arxiv="2503.20783",
        statement="For a negative advantage longer wrong responses are penalised less per token, so incorrect answers "
                  "drift longer.",
        source="specs/algorithms.md section 2.2 (paper sections 3.1-3.2)",
        base=("algorithm.preset=grpo", "algorithm.kl.coef=0.0", "rollout.max_new_tokens=48"),
        arms=(Arm("grpo"), Arm("dr_grpo", ("algorithm.preset=dr_grpo",))),
        measures=(Measure("rollout/completion_len_wrong", "length of wrong answers (tokens)", -1),),
        notes="GRPO at beta=0 against Dr.GRPO (beta=0): the arms differ in exactly the two parts Dr.GRPO swaps.",
    ),
    _text(
        "dapo_clip_higher",
        paper="DAPO (Yu et al.)", arxiv="2503.14476",
        statement="The upper clip limits how fast low-probability (exploration) tokens can grow, which leads to "
                  "entropy collapse.",
        source="specs/algorithms.md section 2.3, item 1 (paper section 3.1)",
        base=("algorithm.preset=dapo", "algorithm.dynamic_sampling=null", "algorithm.num_mini_batches=8"),
        arms=(Arm("symmetric_0.2", ("algorithm.clip.eps_high=0.2",)), Arm("clip_higher_0.28")),
        measures=(Measure("train/entropy", "policy entropy (nats/token)", 1),),
        notes="8 mini-batches per rollout so the ratio leaves 1 and the clip can act (one update per rollout "
              "never clips).",
    ),
    _text(
        "dynamic_sampling",
        paper="DAPO (Yu et al.)", arxiv="2503.14476",
        statement="Over-sample, drop every prompt whose G responses are all correct or all wrong (zero advantage, no "
                  "gradient), and keep generating until the batch holds B_train valid prompts.",
        source="specs/algorithms.md section 2.3, item 2 (paper section 3.2)",
        base=("algorithm.preset=dapo", "algorithm.num_mini_batches=1"),
        arms=(Arm("no_filter", ("algorithm.dynamic_sampling=null",)), Arm("dynamic_sampling")),
        measures=(Measure("filter/num_drawn", "prompts drawn per step (the cost)", 1, "mean"),
                  Measure(ACC, "held-out accuracy gain", 1, "gain"),
                  Measure(ACC, "held-out accuracy gain per prompt drawn", 1, "gain", per="filter/num_drawn")),
    ),
    _text(
        "token_level_loss",
        paper="DAPO (Yu et al.)", arxiv="2503.14476",
        statement="Token-level loss improves stability and keeps length / entropy growth healthy; long low-quality "
                  "(repetitive) samples get penalised proportionally to length.",
        source="specs/algorithms.md section 2.3, item 3 (paper section 3.3)",
        base=("algorithm.preset=grpo", "algorithm.kl.coef=0.0", "rollout.max_new_tokens=48"),
        arms=(Arm("sequence_mean", ("algorithm.aggregation=seq_mean_token_mean",)),
              Arm("token_mean", ("algorithm.aggregation=token_mean",))),
        measures=(Measure("rollout/completion_len_wrong", "length of wrong answers (tokens)", -1),),
    ),
    Claim(
        name="curriculum",
        paper="Kimi k1.5 (Kimi Team)", arxiv="2501.12599",
        statement="Curriculum sampling: start from easier items (difficulty labels), then move to harder ones; "
                  "prioritized sampling: P(i) = (1 - s_i) / sum_j (1 - s_j).",
        source="specs/rewards-and-paradigms.md section 5.5 (report section 2.3.4)",
        config="tiny_vlm_count_grpo",
        base=("data.train=[{task: count_shapes, limit: 512, params: {difficulty: 1.0}}]",
              "eval.sets=[{task: count_shapes, name: hard, params: {difficulty: 1.0}, limit: 100}]",
              "eval.max_prompts=100", "eval.every_n_steps=10", "training.max_steps=40", "run.num_threads=2"),
        quick=("training.max_steps=12", "eval.every_n_steps=4", "eval.max_prompts=50"),
        arms=(Arm("uniform"),
              Arm("curriculum", ("data.sampler.name=curriculum",
                                 "data.sampler.params={by: pass_rate, schedule: linear, start: 0.3, steps: 30}")),
              Arm("prioritized", ("data.sampler.name=prioritized",))),
        measures=(Measure("eval/hard/accuracy", "hard-set accuracy, mean over evaluations (speed)", 1, "mean"),
                  Measure("eval/hard/accuracy", "hard-set accuracy at the end", 1, "final")),
        regime="The tiny VLM (warmed on counting) on count_shapes at the hardest setting, a fixed pool of 512.",
    ),
    Claim(
        name="lmm_r1_text_first",
        paper="LMM-R1 (Peng et al.)", arxiv="2503.07536",
        statement="Stage 1 FRE: rule-based RL on text-only data, then Stage 2 MGT: multimodal generalisation "
                  "training from the FRE checkpoint.",
        source="specs/rewards-and-paradigms.md section 5.2 (paper section 3)",
        config="lmm_r1", base=("run.num_threads=2",),
        quick=("stages.0.advance.steps=10", "eval.max_prompts=50"),
        arms=(Arm("multimodal_only", ("stages=[{kind: rl, name: mgt_multimodal, data: {train: [{task: "
                                      "digit_arithmetic, params: {difficulty: 0.0}}, {task: bar_chart}]}, "
                                      "advance: {steps: 40}}]",)),
              Arm("text_then_multimodal", quick=("stages.1.advance.steps=10",))),
        measures=(Measure("eval/digit_arithmetic/accuracy", "digit arithmetic (images) after MGT", 1, "final"),
                  Measure("eval/bar_chart/accuracy", "bar charts after MGT", 1, "final")),
        regime="The lmm_r1 recipe as shipped (its header says what was scaled down); the control skips stage 1.",
        notes="Equal multimodal steps (40), as the paper compares against the same model trained on multimodal data "
              "only; the text-first arm has had 40 more (text) steps.",
    ),
    Claim(
        name="curr_reft_rejection_sft",
        paper="Curr-ReFT (Deng et al.)", arxiv="2503.07065",
        statement="Rejected-sample self-improvement (anti-forgetting): after RL, sample responses on curated "
                  "queries, keep the high-scoring ones and SFT on them.",
        source="specs/rewards-and-paradigms.md section 5.4",
        config="curr_reft", base=("run.num_threads=2",),
        quick=("stages.0.advance.steps=6", "stages.1.advance.steps=6", "stages.2.advance.steps=6",
               "eval.max_prompts=50"),
        arms=(Arm("rl_only", ("stages=[{kind: rl, name: judge, data: {train: [{task: count_shapes, params: "
                              "{difficulty: 0.6, form: yes_no}}]}, advance: {steps: 30}}, {kind: rl, name: choice, "
                              "data: {train: [{task: count_shapes, params: {difficulty: 0.6, form: choice}}]}, "
                              "advance: {steps: 30}}, {kind: rl, name: open, advance: {steps: 30}}]",)),
              Arm("rl_then_rejection_sft", quick=("stages.3.generate.num_prompts=32", "stages.4.advance.steps=5"))),
        measures=(Measure("eval/bar_chart/accuracy", "general held-out set (bar charts, never RL-trained)", 1,
                          "final"),
                  Measure("eval/count_shapes/accuracy", "target task (open counting)", 1, "final")),
        regime="The curr_reft recipe as shipped; the control stops after the three curriculum RL stages.",
    ),
    _text(
        "process_rewards",
        paper="R1-VL StepGRPO (StepRAR / StepRVR)", arxiv="2503.12937",
        statement="StepRAR rewards matched key steps in the step sections (r = c + alpha k_ps) and StepRVR rewards "
                  "a complete, ordered step structure with the final answer after the last step.",
        source="specs/rewards-and-paradigms.md section 3.1",
        base=("data.train=[{task: word_problem, params: {difficulty: 0.0}}]",
              "eval.sets=[{task: word_problem, params: {difficulty: 0.0}, limit: 100}]",
              "rollout.max_new_tokens=48"),
        arms=(Arm("outcome_only", ("rewards.terms=[{name: math_answer, accuracy: true}]",)),
              Arm("step_rar_rvr", ("rewards.terms=[{name: math_answer, accuracy: true}, {name: step_rar, "
                                   "weight: 0.5}, {name: step_rvr, weight: 0.5}]",))),
        measures=(Measure("eval/word_problem/accuracy", "one-step word problems, held-out accuracy", 1, "final"),),
        notes="The tiny VLM writes no '### Step n' sections, so StepRVR is 0 and StepRAR equals the outcome unless "
              "it learns them: a run that shows no effect here says the regime is wrong, not the paper.",
    ),
    _text(
        "kl_in_loss",
        paper="DAPO (Yu et al.)", arxiv="2503.14476",
        statement="No KL term.",
        source="specs/algorithms.md section 2.3 (paper section 2.3: the KL penalty is removed for long-CoT RL)",
        base=("algorithm.preset=grpo",),
        arms=(Arm("kl_0.04_in_loss"), Arm("no_kl", ("algorithm.kl.coef=0.0",))),
        measures=(Measure(ACC, "held-out accuracy gain", 1, "gain"),),
        notes="GRPO's beta=0.04 k3 in the loss (DeepSeekMath) against beta=0; DAPO predicts no loss from dropping it.",
    ),
    _text(
        "vc_ppo_value_pretraining",
        paper="VC-PPO (Yuan et al.)", arxiv="2503.01491",
        statement="Value pretraining: before PPO, roll out with the fixed initial policy and train the critic on "
                  "Monte-Carlo targets until value loss and explained variance stop improving.",
        source="specs/algorithms.md section 3.3",
        base=("algorithm.preset=vc_ppo", "training.max_steps=30"),
        arms=(Arm("no_pretraining", ("algorithm.critic.pretrain_steps=0",)), Arm("value_pretraining")),
        measures=(Measure(ACC, "held-out accuracy gain", 1, "gain"),),
    ),
)
