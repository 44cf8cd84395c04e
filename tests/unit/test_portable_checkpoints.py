"""Portable checkpoints: what the library saves loads with plain transformers and answers the same.

For every tiny VLM family (and the shipped ``reinforced-tiny-vlm``), a checkpoint written by
``save_checkpoint`` and the ``export/`` folder written by ``export_run``:

(a) name only stock transformers classes (no ``ImageOnly*`` class in any saved file);
(b) load with plain transformers (``AutoModelForImageTextToText`` + ``AutoProcessor``, or where that cannot
    work, ``AutoImageProcessor`` + ``AutoTokenizer``), encode the same prompt to the same ids and pixels as the
    library, and generate the same greedy answer as the library's rollout engine.

(c) What a user gets: with torchvision installed, ``AutoProcessor.from_pretrained`` returns the stock
``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` (with a ``Qwen2VLVideoProcessor`` whose settings mirror the image
processor's) and the library loads the same. Without torchvision (this test machine, CI), transformers 5.x
raises ``ImportError`` (``Qwen2VLVideoProcessor requires the Torchvision library``) from ``AutoProcessor`` for a
Qwen2-VL folder; ``AutoImageProcessor`` + ``AutoTokenizer`` load and work, and the library builds its
image-only processor from the same files. Idefics3 and LLaVA load with ``AutoProcessor`` either way.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
from transformers.utils import is_torchvision_available

from reinforced.cli import main
from reinforced.data.tasks import TASKS
from reinforced.data.templates import to_messages
from reinforced.models import Adapter, load_folder
from reinforced.models.tiny_vlm import TINY_VLM_FAMILIES, build_tiny_vlm, builtin_tiny_vlm_path
from reinforced.rollout.sampler import BuiltinEngine, placeholder_token_ids
from reinforced.training.checkpoint import export_run, save_checkpoint
from reinforced.types import Prompt, SamplingParams

FAMILIES = list(TINY_VLM_FAMILIES.names())
QWEN = ("qwen2_vl", "qwen2_5_vl")
CLASS_KEYS = ("processor_class", "image_processor_type", "video_processor_type", "tokenizer_class")
NEW_TOKENS = 10


def stock_class_names(folder: Path) -> list[str]:
    """Every class name the saved JSON files mention (architectures and processor / tokenizer classes)."""
    names = []
    for f in folder.glob("*.json"):
        data = json.loads(f.read_text())
        for entry in [data, *(v for v in data.values() if isinstance(v, dict))]:
            names += [entry[k] for k in CLASS_KEYS if isinstance(entry.get(k), str)]
        names += data.get("architectures", [])
    return names


def plain_inputs(folder: Path, family: str, messages: list, image: Image.Image) -> dict:
    """Model inputs built with plain transformers only, as a user without this library would."""
    if family not in QWEN or is_torchvision_available():
        processor = AutoProcessor.from_pretrained(folder)
        assert type(processor).__module__.startswith("transformers.")
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images = [[image]] if family == "idefics3" else [image]
        return dict(processor(text=[text], images=images, return_tensors="pt"))
    # No torchvision: the stock Qwen2-VL processor cannot be built (its video processor needs torchvision),
    # so do its one job by hand: one <|image_pad|> per merged patch.
    with pytest.raises(ImportError, match="[Tt]orchvision"):
        AutoProcessor.from_pretrained(folder)
    tokenizer, image_processor = AutoTokenizer.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder)
    pixels = image_processor(images=[image], return_tensors="pt")
    num_tokens = int(pixels["image_grid_thw"].prod()) // image_processor.merge_size**2
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = text.replace("<|image_pad|>", "<|image_pad|>" * num_tokens)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    mm = (ids["input_ids"] == tokenizer.convert_tokens_to_ids("<|image_pad|>")).to(torch.int32)
    return {**ids, **pixels, "mm_token_type_ids": mm}


def assert_portable(folder: Path, family: str, prompt: Prompt) -> None:
    names = stock_class_names(folder)
    assert names and all(hasattr(transformers, n) for n in names), names
    assert not any("ImageOnly" in f.read_text() for f in folder.iterdir() if f.suffix in (".json", ".jinja"))

    # The library: its loader, template rendering and rollout engine (greedy).
    loaded = load_folder(folder)
    adapter = Adapter(loaded, "plain")
    encoded = adapter.encode(prompt)
    params = SamplingParams(group_size=1, max_new_tokens=NEW_TOKENS, temperature=0.0)
    ours = BuiltinEngine(adapter).generate([prompt], params)[0].completions[0]

    # Plain transformers on the same folder, image and messages.
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    inputs = plain_inputs(folder, family, to_messages(prompt, "plain"), prompt.images[0])
    assert inputs["input_ids"][0].tolist() == list(encoded.input_ids)  # same prompt, placeholders expanded
    torch.testing.assert_close(inputs["pixel_values"], encoded.vision["pixel_values"])  # same pixels
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS,
                             suppress_tokens=placeholder_token_ids(model.config))  # the engine never samples these
    theirs = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert theirs[: len(ours.token_ids)] == list(ours.token_ids), (family, theirs, ours.token_ids)
    assert len(ours.token_ids) == NEW_TOKENS or theirs[len(ours.token_ids) - 1] in adapter.eos_token_ids


def count_prompt(seed: int, image_size: int) -> Prompt:
    return TASKS["count_shapes"].sample(random.Random(seed), image_size=image_size, difficulty=0.6)


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_and_export_round_trip_through_plain_transformers(tmp_path: Path, family: str) -> None:
    loaded = load_folder(build_tiny_vlm(family, tmp_path / "built"))
    run_dir = tmp_path / "run"
    checkpoint = save_checkpoint(run_dir, 3, loaded.model, loaded.processor, {"note": "test"})
    exported = export_run(run_dir)
    assert exported == run_dir / "export"
    assert sorted(p.name for p in exported.iterdir()) == sorted(p.name for p in (checkpoint / "model").iterdir())
    assert not (exported / "trainer_state.pt").exists()
    prompt = count_prompt(1, 32)
    assert_portable(checkpoint / "model", family, prompt)
    assert_portable(exported, family, prompt)


def test_shipped_tiny_vlm_is_portable() -> None:
    folder = builtin_tiny_vlm_path()
    prompts = [count_prompt(seed, 64) for seed in range(2)]
    for prompt in prompts:
        assert_portable(folder, "qwen2_vl", prompt)


def test_export_refuses_a_foreign_folder_and_needs_a_checkpoint(tmp_path: Path) -> None:
    from reinforced.training.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        export_run(tmp_path / "run")
    loaded = load_folder(build_tiny_vlm("llava", tmp_path / "built"))
    save_checkpoint(tmp_path / "run", 1, loaded.model, loaded.processor, {})
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a model folder"):
        export_run(tmp_path / "run", foreign)
    assert (foreign / "todo.txt").read_text() == "mine"
    out = export_run(tmp_path / "run", tmp_path / "elsewhere")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    # The CLI: `reinforced export RUN [--out DIR]`; a refused target is a clean error (exit 2).
    assert main(["export", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "export" / "config.json").is_file()
    assert main(["export", str(tmp_path / "run"), "--out", str(foreign)]) == 2
