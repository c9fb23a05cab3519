"""Meta-step throughput on randomly initialised models built from a config: steps/s, tokens/s, peak memory, MFU.

The timing part of `scripts/gpu_check.sh`; needs neither weights nor internet, and runs on CPU too (`--models
tiny`). Each row (model shape x method x full/LoRA) runs in a fresh process that calls the real
`maml_en_llm.train.train` on synthetic tasks, so the model set-up (dtype, LoRA, eager attention for second
order) is exactly what `maml-en-llm train` does; only checkpoint and final-model writes are skipped (disk time
is not training time). Every `train.meta_step` call is timed between device synchronisations: the first is the
warm-up and is run under PyTorch's FlopCounterMode, the next `--steps` are timed (median reported).

FLOPs. `flops_counted` is what a meta-step actually executes in matrix multiplies and attention, counted by
torch.utils.flop_counter during the warm-up step (forward, backward and, for second-order maml, the backward
through the inner gradient; padding included, elementwise work excluded) and scaled by the timed steps' tokens
over the warm-up's. `flops_6nt` is the usual 6 * N * tokens, N = the weights of every nn.Linear (LM head
included, embedding lookups excluded), tokens = real tokens of the step: a full fine-tuning step's cost, a
reference only. It overstates the LM head (lm.py projects only the target positions onto the vocabulary) and
LoRA (no weight gradients for the frozen base), and understates maml (the double backward) and attention.
MFU = flops_counted / step seconds / peak, `mfu_6nt` the same with flops_6nt; peak = the device's dense bf16
tensor-core peak (table below, or --peak-tflops), none on CPU. On CPU, PyTorch's counter does not count the
SDPA attention kernel (it does on CUDA), so CPU FLOPs of metaicl/fomaml leave attention out.

    PYTHONPATH=src python benchmarks/gpu_step.py --models smollm2-135m,llama-1b --methods metaicl,fomaml,maml \\
        --variants full,lora --dtype bfloat16 --steps 3 --json gpu_step.json
    PYTHONPATH=src python benchmarks/gpu_step.py --models tiny --device cpu --dtype float32 --steps 2   # CPU check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

# Llama-architecture shapes. smollm2-135m: HuggingFaceTB/SmolLM2-135M's config; llama-1b: Llama-3.2-1B's.
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=260, tie_word_embeddings=False),
    # SmolLM2's 30 layers at tiny width: a step whose time is operator dispatch, not arithmetic (a CPU stand-in
    # for a small model on a GPU)
    "tiny-30l": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=30, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=260, tie_word_embeddings=False),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                     rope_theta=500000.0),
}
# Dense bf16 tensor-core peak in TFLOP/s, by substring of torch.cuda.get_device_name() (first match wins).
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
                    ("A100", 312.0), ("L40S", 362.1), ("A10G", 70.0), ("L4", 121.0)]
EOS, PAD = 256, 257  # byte-level tokenizer: ids 0-255 are the bytes
LORA = dict(lora_rank=16, lora_alpha=32, lora_dropout=0.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2-135m,llama-1b", help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--methods", default="metaicl,fomaml,maml")
    parser.add_argument("--variants", default="full,lora", help="full and/or lora")
    parser.add_argument("--dtype", default="bfloat16", help="as `maml-en-llm train --dtype` takes it")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--steps", type=int, default=3, help="timed meta-steps per row, after one warm-up step")
    parser.add_argument("--tasks-per-step", type=int, default=4)
    parser.add_argument("--k", type=int, default=4, help="demonstrations per instance")
    parser.add_argument("--example-chars", type=int, default=240,
                        help="input length of each synthetic example (bytes = tokens); k=4 and 240 give ~1024-token "
                             "sequences, MetaICL's cap")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra recipe fields for every row, e.g. --set gradient_checkpointing=true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device")
    parser.add_argument("--work-dir", default=None, help="where model folders and data go (default: a temp dir)")
    parser.add_argument("--json", default=None, help="write the rows here (rewritten after every row)")
    parser.add_argument("--row-timeout", type=int, default=300, help="seconds before a row is given up")
    parser.add_argument("--table", default=None, metavar="JSON", help="only print the table of rows saved by --json")
    parser.add_argument("--profile", default=None, metavar="FILE",
                        help="also run the timed steps under torch.profiler and append each row's busiest operators "
                             "(CPU and GPU self time) to FILE; such rows' timings include the profiler's overhead")
    parser.add_argument("--in-process", action="store_true",
                        help="run every row in this process (quick checks; peak memory is then not per row)")
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: run one row in this process
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.table:
        rows = json.loads(Path(args.table).read_text())
        print_table(rows)
        return rows
    if args.row:
        print("ROW " + json.dumps(run_row(args, json.loads(args.row))))
        return []
    rows = run_all(args)
    print_table(rows)
    return rows


def run_all(args) -> list[dict]:
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu_step-"))
    rows = []
    try:
        data_dir = write_tasks(work / "data", args.example_chars)
        lora_ok = has_lora()
        for shape in args.models.split(","):
            model_dir = write_model(work / "models" / shape, shape, args.device)
            for variant in args.variants.split(","):
                for method in args.methods.split(","):
                    spec = {"model": shape, "method": method, "variant": variant}
                    if variant == "lora" and not lora_ok:
                        rows.append({**spec, "skipped": "this version's recipe has no lora_rank field (no LoRA)"})
                    else:
                        spec.update(model_dir=str(model_dir), data_dir=str(data_dir))
                        rows.append(run_row(args, spec, work) if args.in_process else run_child(args, spec, work))
                    print(f"done {shape} {variant} {method}: " + (rows[-1].get("skipped") or rows[-1].get("error")
                          or f"{rows[-1]['s_per_step']:.3f} s/step"), file=sys.stderr, flush=True)
                    if args.json:  # after every row, so a run cut short keeps what it measured
                        Path(args.json).write_text(json.dumps(rows, indent=1))
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def run_child(args, spec: dict, work: Path) -> dict:
    """One row in a fresh process (clean peak memory, no allocator state carried over)."""
    command = [sys.executable, __file__, "--row", json.dumps(spec), "--dtype", args.dtype, "--steps", str(args.steps),
               "--tasks-per-step", str(args.tasks_per_step), "--k", str(args.k), "--work-dir", str(work)]
    command += ["--device", args.device] if args.device else []
    command += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
    command += ["--profile", args.profile] if args.profile else []
    for item in args.overrides:
        command += ["--set", item]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.row_timeout)
    except subprocess.TimeoutExpired:
        return {key: spec[key] for key in ("model", "method", "variant")} | {"error": f"over {args.row_timeout} s"}
    found = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if done.returncode or not found:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(done.stderr[-4000:], file=sys.stderr)
        return {key: spec[key] for key in ("model", "method", "variant")} | {"error": tail}
    return json.loads(found[-1])


def run_row(args, spec: dict, work: Path | None = None) -> dict:
    """Train `steps + 1` meta-steps with the real loop; time each meta_step call."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import maml_en_llm.models as models
    from maml_en_llm import train as train_module
    from maml_en_llm.config import make_config, parse_overrides

    device = models.pick_device(args.device)
    on_cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    real_step = train_module.meta_step
    record = {"times": [], "tokens": []}
    profiler = []  # started after the warm-up when --profile is given

    def timed_step(model, params, *step_args, **step_kwargs):
        first = "flops_counted" not in record
        sync()
        started = time.perf_counter()
        if first:  # the warm-up: count its FLOPs, then start the peak-memory window
            record.update(matmul_weights=linear_weights(model), trainable=sum(p.numel() for p in params.values()))
            with gqa_flop_counting(), FlopCounterMode(display=False) as counter:
                stats = real_step(model, params, *step_args, **step_kwargs)
            record.update(flops_counted=counter.get_total_flops(), warmup_tokens=stats["tokens"])
            if on_cuda:
                torch.cuda.reset_peak_memory_stats()
        else:
            stats = real_step(model, params, *step_args, **step_kwargs)
        sync()
        if not first:
            record["times"].append(time.perf_counter() - started)
            record["tokens"].append(stats["tokens"])
        elif args.profile:
            profiler.append(start_profiler(on_cuda))
        return stats

    skip_write = lambda *a, **k: None  # noqa: E731
    patches = [(train_module, "meta_step", timed_step), (models, "save_model", skip_write)]
    patches += [(train_module, name, skip_write) for name in ("save_checkpoint", "save_lora_run")
                if hasattr(train_module, name)]
    originals = [(module, name, getattr(module, name)) for module, name, _ in patches]
    overrides = dict(method=spec["method"], steps=args.steps + 1, tasks_per_step=args.tasks_per_step, k=args.k,
                     support_size=2, query_size=2, checkpoint_every=0, lr=1e-5, inner_lr=1e-5)
    if spec["variant"] == "lora":
        overrides.update(LORA)
    overrides.update(parse_overrides(args.overrides))
    config = make_config(overrides=overrides)
    out_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work or args.work_dir))
    try:
        for module, name, replacement in patches:
            setattr(module, name, replacement)
        train_module.train(config, model_name=spec["model_dir"], data_dir=Path(spec["data_dir"]), split="bench",
                           out_dir=out_dir, device=str(device), dtype=args.dtype, progress=False)
    finally:
        for module, name, original in originals:
            setattr(module, name, original)
        shutil.rmtree(out_dir, ignore_errors=True)
        for running in profiler:
            running.__exit__(None, None, None)

    seconds = statistics.median(record["times"])
    tokens = statistics.median(record["tokens"])
    flops = record["flops_counted"] / record["warmup_tokens"] * tokens  # the warm-up's FLOPs per token, scaled
    flops_6nt = 6 * record["matmul_weights"] * tokens
    peak = peak_flops(device, args.peak_tflops)
    if on_cuda:
        memory = {"peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9,
                  "peak_gpu_reserved_gb": torch.cuda.max_memory_reserved() / 1e9}
    else:
        memory = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    return {
        "model": spec["model"], "method": spec["method"], "variant": spec["variant"], "dtype": args.dtype,
        "inner_optimizer": config.inner_optimizer if spec["method"] in ("maml", "fomaml", "reptile") else None,
        "device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "matmul_weights": record["matmul_weights"], "trainable_params": record["trainable"],
        "tokens_per_step": tokens, "s_per_step": seconds, "steps_per_s": 1 / seconds, "tokens_per_s": tokens / seconds,
        "times": record["times"], "flops_counted": flops, "flops_6nt": flops_6nt,
        "mfu": flops / seconds / peak if peak else None,
        "mfu_6nt": flops_6nt / seconds / peak if peak else None, "peak_tflops": peak / 1e12 if peak else None,
        **memory, "torch": torch.__version__, "recipe": {k: v for k, v in overrides.items()},
        **(write_profile(profiler[0], args.profile, spec, args.overrides, sum(record["times"]), on_cuda)
           if profiler else {}),
    }


def start_profiler(on_cuda: bool):
    import torch.profiler as tp

    activities = [tp.ProfilerActivity.CPU] + ([tp.ProfilerActivity.CUDA] if on_cuda else [])
    running = tp.profile(activities=activities)
    running.__enter__()
    return running


def write_profile(profiler, path: str, spec: dict, overrides: list[str], timed_seconds: float, on_cuda: bool) -> dict:
    """Append the row's operator tables to `path`; return the GPU's busy fraction over the timed steps (the sum of
    its kernels' time over the steps' wall time: near 1 when compute-bound, far below when the CPU side, Python
    and kernel launches, is what limits the step). Kernels are summed from the CUDA events alone, as torch's own
    table total is: a CPU operator's entry carries the time of the kernels it launched too. The profiler also
    runs between the timed steps (the loop's own code), which the busy fraction leaves out of its wall time."""
    from torch.autograd import DeviceType

    events = profiler.key_averages()
    device_key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    kernels = [event for event in events
               if event.device_type == DeviceType.CUDA and not getattr(event, "is_user_annotation", False)]
    kernel_seconds = sum(getattr(event, device_key, 0) or 0 for event in kernels) / 1e6 if on_cuda else None
    cpu_seconds = sum(event.self_cpu_time_total for event in events) / 1e6
    busy = kernel_seconds / timed_seconds if on_cuda and timed_seconds else None
    label = " ".join([spec["model"], spec["variant"], spec["method"], *overrides])
    header = (f"## {label}: timed steps {timed_seconds:.3f} s, operators' "
              f"CPU self time {cpu_seconds:.3f} s" + (f", GPU kernels {kernel_seconds:.3f} s (busy {busy:.1%})"
                                                        if busy is not None else ""))
    tables = [events.table(sort_by="self_cpu_time_total", row_limit=25)]
    if on_cuda:
        tables.append(events.table(sort_by=device_key, row_limit=25))
    with open(path, "a") as handle:
        handle.write(header + "\n\n" + "\n".join(tables) + "\n")
    return {"profiled": True, "gpu_busy": busy, "profile_kernel_s": kernel_seconds, "profile_cpu_self_s": cpu_seconds}


@contextlib.contextmanager
def gqa_flop_counting():
    """Let torch's FLOP counter count grouped-query attention, as the SDPA kernels run it.

    Older torch (2.11, for one) counts an SDPA call only when key and value have as many heads as the query, and
    raises AssertionError on grouped-query attention, which every shape in SHAPES uses. The kernel repeats each
    key/value head over its group of query heads, so the call's matrix-multiply FLOPs are those of the same call
    with key/value widened to the query's heads: the count newer torch gives directly (for which this changes
    nothing). Patches torch.utils.flop_counter's two shape formulas for the duration of the block."""
    from torch.utils import flop_counter

    forward, backward = flop_counter.sdpa_flop_count, flop_counter.sdpa_backward_flop_count

    def widen(shape, heads):
        return (shape[0], heads, *shape[2:])

    def gqa_forward(query_shape, key_shape, value_shape):
        heads = query_shape[1]
        return forward(query_shape, widen(key_shape, heads), widen(value_shape, heads))

    def gqa_backward(grad_out_shape, query_shape, key_shape, value_shape):
        heads = query_shape[1]
        return backward(grad_out_shape, query_shape, widen(key_shape, heads), widen(value_shape, heads))

    flop_counter.sdpa_flop_count, flop_counter.sdpa_backward_flop_count = gqa_forward, gqa_backward
    try:
        yield
    finally:
        flop_counter.sdpa_flop_count, flop_counter.sdpa_backward_flop_count = forward, backward


def linear_weights(model) -> int:
    """Weights that take part in matrix multiplies: every nn.Linear's (a tied LM head once)."""
    import torch

    seen, total = set(), 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def peak_flops(device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def has_lora() -> bool:
    from maml_en_llm.config import TrainConfig

    return "lora_rank" in {f.name for f in fields(TrainConfig)}


def write_model(folder: Path, shape: str, device: str | None) -> Path:
    """A randomly initialised Llama of `shape` plus a byte-level tokenizer, saved as an HF folder (bf16)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from maml_en_llm.models import pick_device

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, bos_token_id=None, eos_token_id=EOS,
                         pad_token_id=PAD)
    torch.manual_seed(0)
    with pick_device(device):  # initialise where it is fast (a 1B model takes a minute on CPU)
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the rows run in child processes: leave them the whole GPU
    return folder


def byte_tokenizer():
    """One token per byte (ids 0-255) plus <eos> and <pad>: no vocabulary files to download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={char: i for i, char in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>")


def write_tasks(root: Path, example_chars: int, n_tasks: int = 8, pool: int = 64) -> Path:
    """Synthetic classification tasks in MetaICL's layout and a split `bench` training on all of them."""
    rng = random.Random(0)
    names = [f"task{i}" for i in range(n_tasks)]
    for name in names:
        records = []
        for _ in range(pool):
            text = " ".join("".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 8)))
                            for _ in range(example_chars // 6))[:example_chars]
            records.append({"task": name, "input": text, "output": rng.choice(["yes", "no"]), "options": ["yes", "no"]})
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / f"{name}_16384_100_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "config").mkdir(parents=True, exist_ok=True)
    # a split needs a test task; training never reads it
    (root / "config" / "bench.json").write_text(json.dumps({"train": names, "test": ["unused"]}))
    return root


def print_table(rows: list[dict]) -> None:
    print("| model | variant | method | dtype | s/step | steps/s | tokens/s | peak memory GB | MFU | MFU (6NT) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "s_per_step" not in r:
            print(f"| {r['model']} | {r['variant']} | {r['method']} | | {r.get('skipped') or 'failed: ' + r['error']} "
                  "| | | | | |")
            continue
        memory = r.get("peak_gpu_memory_gb", r.get("peak_rss_gb"))
        mfu = lambda value: f"{100 * value:.1f}%" if value is not None else "-"
        method = r["method"] + (" (profiled" + (f", GPU busy {mfu(r['gpu_busy'])})" if r.get("gpu_busy") is not None
                                                else ")") if r.get("profiled") else "")
        print(f"| {r['model']} | {r['variant']} | {method} | {r['dtype']} | {r['s_per_step']:.3f} | "
              f"{r['steps_per_s']:.2f} | {r['tokens_per_s']:.0f} | {memory:.2f} | {mfu(r['mfu'])} | "
              f"{mfu(r['mfu_6nt'])} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runnable without installing the package
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
