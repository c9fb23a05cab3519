"""Fixtures shared by the tests: a tiny random causal LM with a byte tokenizer, and a tiny task collection.

Nothing here touches the network or ../shared: a user's clone must run the suite as it is.

Tests that take the `device` fixture run on the device named by MAML_EN_LLM_TEST_DEVICE (default cpu;
scripts/gpu_check.sh sets cuda) and are marked `device`, so `pytest -m device` selects them.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

# Tiny models run faster on one thread (and do not fight other processes for the 2 cores).
torch.set_num_threads(1)

SEEDS = (100, 13, 21, 42, 87)
TEST_DEVICE = os.environ.get("MAML_EN_LLM_TEST_DEVICE", "cpu")


def load_script(path: Path):
    """The Python file at `path` (a benchmark or script outside the package) imported as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    config.addinivalue_line("markers", "device: runs on MAML_EN_LLM_TEST_DEVICE (cpu unless set)")
    if torch.device(TEST_DEVICE).type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"MAML_EN_LLM_TEST_DEVICE={TEST_DEVICE} but CUDA is not available here")


def pytest_collection_modifyitems(items):
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where device-aware tests run: cpu, or MAML_EN_LLM_TEST_DEVICE."""
    return torch.device(TEST_DEVICE)


def byte_chars() -> list[str]:
    """GPT-2's printable stand-in character for each byte 0..255 (what ByteLevel pre-tokenization emits)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def make_tokenizer():
    """Byte-level BPE whose id for byte b is b, plus one merge ("\\n\\n" -> 256) so joint and separate
    tokenization differ, as they do with real tokenizers. Specials: <eos>=257, <pad>=258."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = byte_chars()
    vocab = {c: b for b, c in enumerate(chars)}
    newline = chars[ord("\n")]
    vocab[newline * 2] = 256
    core = Tokenizer(models.BPE(vocab=vocab, merges=[(newline, newline)]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>")
    assert tok.convert_tokens_to_ids("<eos>") == 257 and tok.convert_tokens_to_ids("<pad>") == 258
    return tok


def make_tiny_model(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (width 64) with random weights and the byte tokenizer, saved as an HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, eos_token_id=257, pad_token_id=258, bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return Path(path)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def make_tiny_data(root: Path, pool_size: int = 48, test_size: int = 12) -> Path:
    """Five synthetic tasks in MetaICL's layout and a split `tiny` over them.

    Classification tasks label a random lowercase word by a simple rule; `mc_pick` is multi-choice with
    per-example options. Train: cls_a, cls_b, mc_pick; test: cls_c, cls_d (cls_d is the unseen-domain one).
    """
    rng = random.Random(0)
    rules = {
        "cls_a": (["yes", "no"], lambda w: "yes" if "a" in w else "no"),
        "cls_b": (["short", "long"], lambda w: "short" if len(w) < 5 else "long"),
        "cls_c": (["even", "odd"], lambda w: "even" if len(w) % 2 == 0 else "odd"),
        "cls_d": (["red", "green", "blue"], lambda w: ["red", "green", "blue"][len(w) % 3]),
    }

    def word() -> str:
        return "".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 8)))

    def records(task: str, n: int) -> list[dict]:
        out = []
        for _ in range(n):
            if task == "mc_pick":
                options = sorted({word() for _ in range(3)} | {"zz"})
                out.append({"task": task, "input": "pick zz from " + " ".join(options), "output": "zz", "options": options})
            else:
                options, rule = rules[task]
                w = word()
                out.append({"task": task, "input": w, "output": rule(w), "options": options})
        return out

    root = Path(root)
    for task in [*rules, "mc_pick"]:
        _write_jsonl(root / task / f"{task}_16384_100_train.jsonl", records(task, pool_size))
        for seed in SEEDS:
            for split, n in (("train", 16), ("dev", 16), ("test", test_size)):
                _write_jsonl(root / task / f"{task}_16_{seed}_{split}.jsonl", records(task, n))
        meta = {"task_type": "multi-choice", "options": None} if task == "mc_pick" else \
            {"task_type": "classification", "options": rules[task][0]}
        (root / "config" / "tasks").mkdir(parents=True, exist_ok=True)
        (root / "config" / "tasks" / f"{task}.json").write_text(json.dumps(meta))
    split = {"train": ["cls_a", "cls_b", "mc_pick"], "test": ["cls_c", "cls_d"], "unseen_domain_test": ["cls_d"]}
    (root / "config" / "tiny.json").write_text(json.dumps(split))
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture()
def tiny_data_dir(tmp_path) -> Path:
    return make_tiny_data(tmp_path / "data")
