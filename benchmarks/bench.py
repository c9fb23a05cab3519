"""`make bench`: run every benchmark once and write their figures into docs/benchmarks.md.

Steps, each a subprocess whose exact command is recorded in the document:

1. data: `maml-en-llm data bigbench --out <tmp>`, timed (the BIG-bench collection the scoring workloads then read);
2. scoring: `benchmarks/scoring.py` (ours vs naive vs lm-evaluation-harness; raw numbers in docs/scoring.json);
3. cost: `benchmarks/cost.py` (seconds and peak memory per meta-step; raw numbers in docs/cost.json), whose
   Markdown output is inserted as it is.

Only the generated blocks of docs/benchmarks.md change: each sits between `<!-- make bench: NAME -->` and
`<!-- /make bench: NAME -->`; everything outside them is hand-written and kept. A block whose markers are missing is
appended at the end. A failing step is reported in its block and the others still run; the exit code is then 1.
Torch runs on `--threads` threads (default 1) in the scoring and cost steps.

    python benchmarks/bench.py                       # what `make bench` runs
    python benchmarks/bench.py --only scoring --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("data", "scoring", "cost")


class StepFailed(Exception):
    pass


def run(command: list[str], label: str, env: dict | None = None) -> tuple[str, float]:
    """Run a step, streaming its stderr; its stdout and wall seconds (StepFailed on a non-zero exit)."""
    print(f"== {label}: {shlex.join(command)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - started
    if result.returncode:
        raise StepFailed(f"failed (exit {result.returncode}) after {seconds:.0f} s")
    return result.stdout, seconds


def shown(command: list[str], replacements: dict[str, str]) -> str:
    """A command as the document shows it: the venv's python as `python`, temporary paths as placeholders."""
    text = shlex.join(["python" if part == sys.executable else part for part in command])
    for path, name in replacements.items():
        text = text.replace(path, name)
    return text


def machine() -> dict:
    import torch
    import transformers

    from maml_en_llm.provenance import cpu_name, git_commit

    try:
        import lm_eval

        lm_eval_version = lm_eval.__version__
    except ImportError:
        lm_eval_version = None
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "memory_gib": round(memory_gib, 1),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "lm_eval": lm_eval_version, "git_commit": git_commit()}


def replace_block(document: str, name: str, body: str) -> str:
    start, end = f"<!-- make bench: {name} -->", f"<!-- /make bench: {name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document)
    return document.rstrip() + "\n\n" + block + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps among {', '.join(STEPS)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of the scoring benchmark")
    parser.add_argument("--cost-steps", type=int, default=3, help="timed meta-steps per cost configuration")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the scoring and cost runs (default 1: on a shared machine a second "
                             "OpenMP thread that gets descheduled stalls every operation)")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    steps = [s for s in args.only.split(",") if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise SystemExit(f"--only: unknown step {unknown[0]!r}; choose among {', '.join(STEPS)}")

    started = time.perf_counter()
    info = machine()  # before the steps: they rewrite docs/*.json, which would mark the commit "-dirty"
    blocks, rows, failed = {}, [], []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        data_dir = Path(tmp) / "bigbench"
        placeholders = {str(data_dir): "<tmp>/bigbench", str(Path(tmp)): "<tmp>"}
        for step in steps:
            env, prefix = {}, ""
            if step == "data":
                from maml_en_llm.bigbench import ARCHIVE_NAME
                from maml_en_llm.paths import cache_dir

                cached = (Path(cache_dir()) / "downloads" / ARCHIVE_NAME).is_file()
                script = Path(sys.executable).parent / "maml-en-llm"
                command = [str(script)] if script.is_file() else [sys.executable, "-m", "maml_en_llm"]
                command += ["data", "bigbench", "--out", str(data_dir)]
                placeholders[shlex.join(command[:1])] = "maml-en-llm"
            elif step == "scoring":  # on the collection just built, else on the cached one
                source = ["--data-dir", str(data_dir)] if (data_dir / "MANIFEST.json").is_file() else []
                command = [sys.executable, "benchmarks/scoring.py", *source, "--repeats", str(args.repeats),
                           "--threads", str(args.threads), "--json", "docs/scoring.json"]
            else:
                command = [sys.executable, "benchmarks/cost.py", "--steps", str(args.cost_steps), "--json",
                           "docs/cost.json"]
                env, prefix = {"OMP_NUM_THREADS": str(args.threads)}, f"OMP_NUM_THREADS={args.threads} "
            text = prefix + shown(command, placeholders)
            try:
                output, seconds = run(command, step, env)
            except StepFailed as failure:
                failed.append(step)
                rows.append((step, text, f"{failure}"))
                blocks[step] = f"`{text}`: **{failure}**; see its output on the terminal. No figures from this run."
                continue
            rows.append((step, text, f"{seconds:.0f}"))
            if step == "data":
                counts = json.loads((data_dir / "MANIFEST.json").read_text()).get("counts", {})
                source = ("the 358 MB sdist was already in the download cache, so this is reading and converting it"
                          if cached else "this includes downloading the 358 MB sdist from PyPI into the cache")
                blocks[step] = (f"`{text}`: **{seconds:.0f} s** wall; {counts.get('tasks', '?')} tasks written from "
                                f"{counts.get('task_json_files', '?')} task files ({source}).")
            elif step == "scoring":
                report = json.loads((ROOT / "docs" / "scoring.json").read_text())
                blocks[step] = (f"`{text}` ({seconds:.0f} s wall; model {report['model']}, float32, "
                                f"{report['torch_threads']} torch thread(s), batch size {report['batch_size']} for "
                                f"ours and lm-eval, lm-eval {report['lm_eval']}, median of {report['repeats']} "
                                f"interleaved rounds):\n\n{output.strip()}")
            else:
                blocks[step] = f"`{text}` ({seconds:.0f} s wall):\n\n{output.strip()}"

    total = time.perf_counter() - started
    gpu = info["gpu"] or "no GPU"
    lines = [f"Last `make bench` run: {info['cpu']}, {info['cpu_count']} cores, {info['memory_gib']} GiB RAM, {gpu}; "
             f"Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, "
             f"lm-eval {info['lm_eval']}; commit `{info['git_commit']}` at the start. Steps run: {', '.join(steps)}; "
             f"**{total:.0f} s** wall in all (`python benchmarks/bench.py`, without the set-up `make` does first).",
             "", "| step | command | wall s |", "|---|---|---|"]
    lines += [f"| {step} | `{text}` | {seconds} |" for step, text, seconds in rows]
    blocks["run"] = "\n".join(lines)
    document = args.doc.read_text() if args.doc.exists() else "# Benchmarks\n"
    for name, body in blocks.items():
        document = replace_block(document, name, body)
    args.doc.write_text(document)
    print(f"wrote {args.doc} ({', '.join(blocks)}) in {total:.0f} s", file=sys.stderr)
    if failed:
        raise SystemExit(f"failed steps: {', '.join(failed)}")


if __name__ == "__main__":
    main()
