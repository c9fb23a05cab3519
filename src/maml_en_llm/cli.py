"""The `maml-en-llm` command: argument parsing only; each subcommand calls one library function.

User mistakes raise `UserError` anywhere below; here they become one `error: ...` line and exit code 2.
Heavy imports (torch, transformers, datasets) happen inside the subcommands so `--help` stays instant.

Conventions every subcommand follows:
* `--out` is always a folder (eval writes `results.json` into it; train a run folder; compare its report; data
  and export their files). Nothing is written until every input has been checked.
* One meaning per flag: `--method` is a training algorithm; `--prompt direct|channel` is the scoring direction.
* Flags are never abbreviated (`--meth` is an error, not `--methods`).
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from . import __version__
from .errors import UserError
from .models import DEFAULT_MODEL, PACKAGED_MODELS

# A full disk, a quota, a read-only mount or missing permissions: the machine's state, not a bug in maml-en-llm.
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
METHODS = ("metaicl", "maml", "fomaml", "reptile", "ict", "multitask0")
LOGGERS = ("tensorboard", "wandb", "none")
PROMPTS = ("direct", "channel")

DESCRIPTION = """\
Meta-train causal language models to learn new tasks in context (MAML-en-LLM, MetaICL, in-context tuning,
Reptile, multi-task zero-shot) and evaluate k-shot learning on unseen tasks, with MetaICL's data format,
prompts and metrics."""

EPILOG = """\
typical use:
  maml-en-llm data bigbench                                  # 287 BIG-bench tasks + built-in splits, offline after
  maml-en-llm recipes                                        # the packaged training recipes
  maml-en-llm train --config maml --split bb_hr_to_lr --out runs/maml steps=100 k=4
  maml-en-llm eval --model runs/maml/final --split bb_hr_to_lr --k 4 --out runs/maml/eval
  maml-en-llm compare --split bb_hr_to_lr --methods none,metaicl,maml --steps 100 --k 4 --out runs/cmp

`--out` is always a folder. `maml-en-llm COMMAND --help` lists a command's options.
Docs: README.md and docs/ in the source repository."""


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage mistake is one `error:` line (exit code 2) like every other mistake, instead
    of the usage text followed by the error. Subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message}; see `{self.prog} --help`\n")


def _command(commands, name: str, help_text: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand that never abbreviates flags (so `--method` can never silently mean `--methods`)."""
    return commands.add_parser(name, help=help_text, description=help_text, allow_abbrev=False, **kwargs)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder in MetaICL's layout (default: the BIG-bench collection built by `data bigbench`)")
    p.add_argument("--split", required=True,
                   help="split file path, a split name under <data-dir>/config/, or a built-in setting name")


def _add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model dtype (default float32)")


def _add_prompt_arg(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--prompt", default="direct", choices=PROMPTS,
                   help="direct: score each option given the input; channel: score the input given each option "
                        f"(MetaICL's noisy channel){what} (default direct)")
    # Earlier versions called this --method; one flag, one meaning: say so instead of "unrecognized argument".
    p.add_argument("--method", dest="removed_method", default=None, help=argparse.SUPPRESS)


def _add_eval_args(p: argparse.ArgumentParser, k_default: int | None = 16) -> None:
    p.add_argument("--k", type=int, default=k_default,
                   help="demonstrations per prompt, 0 = zero-shot, up to the size of the demonstration files "
                        "(default 16" + ("; compare: the recipe's k if --config gives one, and it sets the training k too)"
                                         if k_default is None else ")"))
    p.add_argument("--seeds", type=_int_list, default=[100, 13, 21, 42, 87], help="comma-separated seeds")
    _add_prompt_arg(p, "; compare trains with the same direction" if k_default is None else "")
    p.add_argument("--max-test", type=int, default=None, help="score only the first N test examples per seed")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass when scoring")
    p.add_argument("--adapt-steps", type=int, default=0,
                   help="also fine-tune a copy on each seed's k demonstrations for N steps, then evaluate (default 0)")
    p.add_argument("--adapt-lr", type=float, default=1e-5, help="learning rate of adaptation (default 1e-5)")
    p.add_argument("--adapt-optimizer", default="adam", choices=["sgd", "adam"], help="adaptation optimizer")
    if k_default is not None:  # eval
        p.add_argument("--examples", default="test", choices=["test", "dev"],
                       help="score each seed's test examples (default) or its dev examples, which are disjoint from "
                            "them: choose settings (an adaptation rate, k, a prompt) on dev, report on test")
        p.add_argument("--demo-labels", default="gold", choices=["gold", "random", "symbols"],
                       help="diagnostics: gold labels (default); random labels in the demonstrations; or the labels "
                            "renamed to arbitrary words in demonstrations and test examples (does the model read "
                            "them?)")
    else:  # compare
        p.add_argument("--diagnostics", type=_str_list, default=["zero-shot"],
                       help="extra evaluations of every row: zero-shot (k=0, for the ICL gain), random (random "
                            "demonstration labels), symbols (arbitrary label words); comma-separated, 'none' for "
                            "none (default zero-shot)")


def _add_data_commands(commands) -> None:
    data = _command(commands, "data", "build task collections in MetaICL's layout")
    kinds = data.add_subparsers(dest="kind", required=True, metavar="{bigbench,hf}")
    bb = _command(kinds, "bigbench", "BIG-bench multiple-choice tasks and the built-in splits, from PyPI's sdist")
    bb.add_argument("--archive", type=Path, default=None, help="bigbench-1.0.0.tar.gz (default: pip download it)")
    bb.add_argument("--out", type=Path, default=None, help="output folder (default: the cache that train/eval read)")
    bb.add_argument("--max-per-task", type=int, default=None, help="cap each task's meta-training pool")

    hf = _command(kinds, "hf", "one Hugging Face `datasets` dataset (hub id or save_to_disk folder) as a MetaICL "
                               "task, sampled as MetaICL samples (needs the `hf` extra)")
    hf.add_argument("--dataset", required=True, help="hub id (e.g. nyu-mll/glue) or a folder from save_to_disk")
    hf.add_argument("--name", default=None, help="the dataset's configuration (e.g. sst2 for nyu-mll/glue)")
    hf.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) to pin")
    hf.add_argument("--task", required=True, help="task name: the folder and file prefix in --out")
    hf.add_argument("--text-fields", type=_str_list, required=True,
                    help="comma-separated text column(s) that make the input, joined by --sep")
    hf.add_argument("--sep", default=" [SEP] ", help="joins several text fields (default ' [SEP] ', as CrossFit)")
    hf.add_argument("--template", default=None,
                    help="instead of joining: a Python format string over columns, e.g. 'premise: {sentence1} "
                         "[SEP] hypothesis: {sentence2}'")
    hf.add_argument("--label-field", required=True, help="the label column (class index or string)")
    hf.add_argument("--label-names", type=_str_list, default=None,
                    help="comma-separated option names for label 0, 1, ... (default: the ClassLabel names)")
    hf.add_argument("--options-field", default=None,
                    help="multi-choice: a column holding each example's list of options (the label indexes it)")
    hf.add_argument("--train-split", default="train", help="split the pool and demonstrations come from (train)")
    hf.add_argument("--test-split", default=None, help="split the test set comes from (default: validation, else test)")
    hf.add_argument("--shots", type=_int_list, default=[16],
                    help="demonstration file sizes K: <task>_<K>_<seed>_{train,dev,test}.jsonl (default 16)")
    hf.add_argument("--seeds", type=_int_list, default=[100, 13, 21, 42, 87], help="comma-separated seeds")
    hf.add_argument("--max-pool", type=int, default=16384, help="cap of the meta-training pool (default 16384)")
    hf.add_argument("--max-test", type=int, default=None, help="keep N test examples (a fixed seeded subset)")
    hf.add_argument("--out", type=Path, required=True, help="data folder in MetaICL's layout (created or added to)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="maml-en-llm", description=DESCRIPTION, epilog=EPILOG, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"maml-en-llm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, title="commands",
                                     metavar="{data,train,eval,compare,recipes,export}")
    _add_data_commands(commands)

    tr = _command(commands, "train", "meta-train a model (MetaICL, MAML-en-LLM, FOMAML, Reptile, ICT, multi-task 0-shot)")
    tr.add_argument("--method", choices=METHODS, default=None,
                    help="training algorithm; optional when the --config recipe sets `method` (a different value "
                         "is an error)")
    tr.add_argument("--config", type=Path, default=None,
                    help="YAML recipe path or packaged recipe name (see `maml-en-llm recipes`); key=value overrides it")
    tr.add_argument("--model", default=DEFAULT_MODEL, help=f"base model (default {DEFAULT_MODEL})")
    _add_data_args(tr)
    tr.add_argument("--out", type=Path, required=True,
                    help="run folder: config.yaml, run.json, metrics.jsonl, TensorBoard events, checkpoints/, final/")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    tr.add_argument("--allow-train-test-overlap", action="store_true",
                    help="accept a split whose train and test lists share tasks (refused otherwise: the test "
                         "tasks would leak into meta-training); recorded in run.json")
    tr.add_argument("--logger", choices=LOGGERS, default="tensorboard",
                    help="mirror metrics.jsonl to TensorBoard event files in --out (default), Weights & Biases "
                         "(the `wandb` extra; WANDB_PROJECT names the project), or none")
    tr.add_argument("overrides", nargs="*", metavar="key=value", help="recipe fields, e.g. steps=100 lr=1e-5")
    _add_device_args(tr)

    ev = _command(commands, "eval", "k-shot in-context evaluation (and optional adaptation) on a split's test tasks")
    ev.add_argument("--model", default=DEFAULT_MODEL,
                    help=f"HF hub id, local HF folder or packaged name: {', '.join(PACKAGED_MODELS)} "
                         f"(default {DEFAULT_MODEL})")
    _add_data_args(ev)
    _add_eval_args(ev)
    ev.add_argument("--tasks", type=_str_list, default=None, help="only these test tasks (comma-separated)")
    ev.add_argument("--format", default="auto", choices=["auto", "newline", "space"],
                    help="MetaICL's prompt format; auto (default) = MetaICL's choice: space for a GPT-2 that was not "
                         "meta-trained here, newline otherwise")
    ev.add_argument("--bos", default="auto", choices=["auto", "yes", "no"],
                    help="start every sequence with the BOS token: auto (default) = where the tokenizer's own settings "
                         "add one (Gemma), as lm-evaluation-harness does; no = never (MetaICL)")
    ev.add_argument("--out", type=Path, required=True, help="folder to write results.json into (created if needed)")
    _add_device_args(ev)

    cmp_ = _command(commands, "compare", "train several methods on one budget, evaluate all, tabulate and plot")
    _add_data_args(cmp_)
    cmp_.add_argument("--methods", type=_str_list, default=["none", "metaicl", "maml"],
                      help="comma-separated: none (base model), " + ", ".join(METHODS))
    cmp_.add_argument("--model", default=DEFAULT_MODEL, help=f"base model of every row (default {DEFAULT_MODEL})")
    budget = cmp_.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="meta-steps per method")
    budget.add_argument("--tokens", type=int, default=None, help="training tokens per method (steps derived)")
    budget.add_argument("--budget", default=None, metavar="KIND=N",
                        help="steps=N (= --steps N), tokens=N (= --tokens N), or seconds=S: equal wall-clock, each "
                             "method's steps = S / its timed seconds per meta-step")
    _add_eval_args(cmp_, k_default=None)
    cmp_.add_argument("--sweep", default=None, help="FIELD=v1,v2,... : ablate one recipe field for one method")
    cmp_.add_argument("--train-seeds", default=None, metavar="S1,S2,...",
                      help="train every method once per seed; each method's row is the mean over its seeds, and "
                           "the tests count the seeds as a source of noise (docs/compare.md)")
    cmp_.add_argument("--jobs", type=int, default=1, metavar="N",
                      help="up to N trainings and evaluations at once, each in its own process (a row's evaluations "
                           "once it is trained): fills a GPU that one small model leaves idle (not with --budget "
                           "seconds; default 1)")
    cmp_.add_argument("--train-jobs", type=int, default=None, metavar="M",
                      help="with --jobs N: at most M of the N workers train at once, the others evaluate (a "
                           "training holds several times an evaluation's memory); default N")
    cmp_.add_argument("--config", type=Path, default=None, help="YAML recipe shared by all methods")
    cmp_.add_argument("--out", type=Path, required=True, help="folder for runs, compare.json/.md/.png")
    cmp_.add_argument("--allow-train-test-overlap", action="store_true",
                      help="accept a split whose train and test lists share tasks (refused otherwise: the test "
                           "tasks would leak into meta-training); recorded in each run's run.json")
    cmp_.add_argument("overrides", nargs="*", metavar="key=value", help="recipe fields shared by all methods")
    _add_device_args(cmp_)

    rc = _command(commands, "recipes", "list the packaged training recipes, or show one with each field's meaning")
    rc_actions = rc.add_subparsers(dest="action", required=False, metavar="{list,show}")
    _command(rc_actions, "list", "list the packaged recipes (the default)")
    show = _command(rc_actions, "show", "print a recipe with every field, its value and its meaning")
    show.add_argument("name", help="packaged recipe name or a YAML path")

    ex = _command(commands, "export", "export data for other tools")
    targets = ex.add_subparsers(dest="target", required=True, metavar="{lm-eval}")
    le = _command(targets, "lm-eval", "a split's test tasks as lm-evaluation-harness task YAMLs: k-shot with the "
                                      "same demonstrations per seed, MetaICL's Macro-F1/accuracy")
    _add_data_args(le)
    le.add_argument("--k", type=int, default=16, help="demonstrations per prompt (default 16)")
    le.add_argument("--seeds", type=_int_list, default=[100, 13, 21, 42, 87], help="comma-separated seeds")
    le.add_argument("--tasks", type=_str_list, default=None, help="only these test tasks (comma-separated)")
    le.add_argument("--max-test", type=int, default=None, help="only the first N test examples per seed")
    le.add_argument("--format", default="newline", choices=["newline", "space"],
                    help="MetaICL's separators: newline (default) or space")
    le.add_argument("--tokenizer", default=None,
                    help="model whose tokenizer counts option tokens, so lm-eval predicts by MetaICL's mean loss "
                         "per token; without it, by lm-eval's summed log-likelihood")
    le.add_argument("--out", type=Path, required=True, help="folder for the YAMLs, utils.py and the data copies")
    return parser


def resolve_train_method(args: argparse.Namespace) -> str:
    """The one training method from --method, the recipe's `method` and a `method=` override; a conflict or no
    method at all is an error (a recipe that says maml must never silently train metaicl)."""
    import yaml

    from .config import parse_overrides, resolve_recipe

    given: dict[str, str] = {}
    if args.config is not None:
        path = resolve_recipe(args.config)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            loaded = None  # make_config reports malformed YAML with its line
        if isinstance(loaded, dict) and loaded.get("method") is not None:
            given[f"--config {args.config}"] = str(loaded["method"])
    if args.method is not None:
        given["--method"] = args.method
    overrides = parse_overrides(args.overrides)
    if overrides.get("method") is not None:
        given[f"method={overrides['method']}"] = str(overrides["method"])
    if len(set(given.values())) > 1:
        raise UserError("train: conflicting methods: " + ", ".join(f"{src} says {m}" for src, m in given.items())
                        + "; give the method once")
    if not given:
        raise UserError(f"train: no method; pass --method ({', '.join(METHODS)}) or a --config recipe that sets "
                        "method (see `maml-en-llm recipes`)")
    return next(iter(given.values()))


def run(args: argparse.Namespace, argv: list[str]) -> None:
    command_line = "maml-en-llm " + " ".join(argv)
    removed = getattr(args, "removed_method", None)
    if removed is not None:
        hint = "; to list training methods use --methods" if args.command == "compare" and removed not in PROMPTS \
            else ""
        raise UserError(f"--method {removed}: the scoring direction is now --prompt direct|channel (--method names a "
                        f"training algorithm){hint}")
    if args.command == "data" and args.kind == "bigbench":
        from .bigbench import build_collection

        build_collection(archive=args.archive, out=args.out, max_per_task=args.max_per_task)
    elif args.command == "data":
        from .hf_data import run_data_hf

        run_data_hf(args)
    elif args.command == "eval":
        from .evaluate import run_eval

        run_eval(args, command_line)
    elif args.command == "train":
        from .train import run_train

        args.method = resolve_train_method(args)
        if args.logger == "wandb":
            try:  # fail before the model loads
                import wandb  # noqa: F401
            except ImportError:
                raise UserError("--logger wandb: wandb is not installed; pip install 'maml-en-llm[wandb]' "
                                "or use --logger tensorboard") from None
        run_train(args, command_line)
    elif args.command == "compare":
        from .compare import run_compare

        run_compare(args, command_line)
    elif args.command == "recipes":
        from .recipe_help import list_recipes, show_recipe

        print(show_recipe(args.name) if args.action == "show" else list_recipes())
    elif args.command == "export":
        from .lmeval import run_export

        run_export(args, command_line)


def _out_of_device_memory(err: BaseException) -> bool:
    """An accelerator allocation failure (`torch.OutOfMemoryError`, raised by CUDA): the settings asked for more
    memory than the device has, not a bug."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(err, torch.OutOfMemoryError)


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
    except RuntimeError as err:
        if not _out_of_device_memory(err):
            raise  # anything else is a bug: keep its traceback
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: out of accelerator memory ({reason[:160]}); lower --batch-size (evaluation), the recipe's "
              "tasks_per_step, support_size or query_size (training), or compare --jobs, then run the same command "
              "again (train: with --resume; finished runs and evaluations are reused)", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in ENVIRONMENT_ERRNOS:
            raise  # anything else is a bug: keep its traceback
        print(f"error: {err.filename or ''}: {err.strerror}; free disk space or fix permissions, then run the same "
              "command again (train: with --resume; finished runs and evaluations are reused)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
