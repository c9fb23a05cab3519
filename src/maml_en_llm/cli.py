"""The `maml-en-llm` command: argument parsing only; each subcommand calls one library function.

User mistakes raise `UserError` anywhere below; here they become one `error: ...` line and exit code 2.
Heavy imports (torch, transformers) happen inside the subcommands so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from .errors import UserError
from .models import DEFAULT_MODEL, PACKAGED_MODELS

# A full disk, a quota, a read-only mount or missing permissions: the machine's state, not a bug in maml-en-llm.
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
METHODS = ("metaicl", "maml", "fomaml", "reptile", "ict", "multitask0")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder in MetaICL's layout (default: the BIG-bench collection built by `data bigbench`)")
    p.add_argument("--split", required=True,
                   help="split file path, a split name under <data-dir>/config/, or a built-in setting name")


def _add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model dtype (default float32)")


def _add_eval_args(p: argparse.ArgumentParser, k_default: int | None = 16) -> None:
    p.add_argument("--k", type=int, default=k_default,
                   help="demonstrations per prompt, 0 = zero-shot (default 16" +
                        ("; compare: the recipe's k if --config gives one, and it sets the training k too)" if k_default is None else ")"))
    p.add_argument("--seeds", type=_int_list, default=[100, 13, 21, 42, 87], help="comma-separated seeds")
    p.add_argument("--method", default="direct", choices=["direct", "channel"], help="direct or noisy channel")
    p.add_argument("--max-test", type=int, default=None, help="score only the first N test examples per seed")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass when scoring")
    p.add_argument("--adapt-steps", type=int, default=0,
                   help="also fine-tune a copy on each seed's k demonstrations for N steps, then evaluate (default 0)")
    p.add_argument("--adapt-lr", type=float, default=1e-5, help="learning rate of adaptation (default 1e-5)")
    p.add_argument("--adapt-optimizer", default="adam", choices=["sgd", "adam"], help="adaptation optimizer")


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage mistake is one `error:` line (exit code 2) like every other mistake, instead
    of the usage text followed by the error. Subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="maml-en-llm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="build offline task collections")
    data_kinds = data.add_subparsers(dest="kind", required=True)
    bb = data_kinds.add_parser("bigbench", help="BIG-bench multiple-choice tasks in MetaICL's layout, from PyPI's sdist")
    bb.add_argument("--archive", type=Path, default=None, help="bigbench-1.0.0.tar.gz (default: pip download it)")
    bb.add_argument("--out", type=Path, default=None, help="output folder (default: the cache that train/eval read)")
    bb.add_argument("--max-per-task", type=int, default=None, help="cap each task's meta-training pool")

    ev = commands.add_parser("eval", help="k-shot in-context evaluation (and optional adaptation) on a split's test tasks")
    ev.add_argument("--model", default=DEFAULT_MODEL, help=f"HF hub id, local HF folder or packaged name: {', '.join(PACKAGED_MODELS)} (default {DEFAULT_MODEL})")
    _add_data_args(ev)
    _add_eval_args(ev)
    ev.add_argument("--tasks", type=_str_list, default=None, help="only these test tasks (comma-separated)")
    ev.add_argument("--out", type=Path, required=True, help="results JSON to write")
    _add_device_args(ev)

    tr = commands.add_parser("train", help="meta-train a model (MetaICL, MAML-en-LLM, FOMAML, Reptile, ICT, multi-task 0-shot)")
    tr.add_argument("--method", required=True, choices=METHODS)
    tr.add_argument("--model", default=DEFAULT_MODEL, help=f"base model (default {DEFAULT_MODEL})")
    _add_data_args(tr)
    tr.add_argument("--out", type=Path, required=True, help="run folder: metrics.jsonl, checkpoints/, final/")
    tr.add_argument("--config", type=Path, default=None, help="YAML recipe path or packaged recipe name (metaicl, maml, fomaml, reptile, ict, multitask0, "
                         "cpu-demo); key=value arguments override it")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    tr.add_argument("--allow-train-test-overlap", action="store_true",
                    help="accept a split whose train and test lists share tasks (refused otherwise: the test "
                         "tasks would leak into meta-training); recorded in run.json")
    tr.add_argument("overrides", nargs="*", metavar="key=value", help="recipe fields, e.g. steps=100 lr=1e-5")
    _add_device_args(tr)

    cmp_ = commands.add_parser("compare", help="train several methods on one budget, evaluate all, tabulate and plot")
    _add_data_args(cmp_)
    cmp_.add_argument("--methods", type=_str_list, default=["none", "metaicl", "maml"],
                      help="comma-separated: none (base model), " + ", ".join(METHODS))
    cmp_.add_argument("--model", default=DEFAULT_MODEL)
    budget = cmp_.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="meta-steps per method")
    budget.add_argument("--tokens", type=int, default=None, help="training tokens per method (steps derived)")
    _add_eval_args(cmp_, k_default=None)
    cmp_.add_argument("--sweep", default=None, help="FIELD=v1,v2,... : ablate one recipe field for one method")
    cmp_.add_argument("--config", type=Path, default=None, help="YAML recipe shared by all methods")
    cmp_.add_argument("--out", type=Path, required=True, help="folder for runs, compare.json/.md/.png")
    cmp_.add_argument("--allow-train-test-overlap", action="store_true",
                      help="accept a split whose train and test lists share tasks (refused otherwise: the test "
                           "tasks would leak into meta-training); recorded in each run's run.json")
    cmp_.add_argument("overrides", nargs="*", metavar="key=value", help="recipe fields shared by all methods")
    _add_device_args(cmp_)
    return parser


def run(args: argparse.Namespace, argv: list[str]) -> None:
    command_line = "maml-en-llm " + " ".join(argv)
    if args.command == "data":
        from .bigbench import build_collection

        build_collection(archive=args.archive, out=args.out, max_per_task=args.max_per_task)
    elif args.command == "eval":
        from .evaluate import run_eval

        run_eval(args, command_line)
    elif args.command == "train":
        from .train import run_train

        run_train(args, command_line)
    elif args.command == "compare":
        from .compare import run_compare

        run_compare(args, command_line)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        run(args, argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        if err.errno not in ENVIRONMENT_ERRNOS:
            raise  # anything else is a bug: keep its traceback
        print(f"error: {err.filename or ''}: {err.strerror}; free disk space or fix permissions, then run the same "
              "command again (train: with --resume; finished runs and evaluations are reused)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
