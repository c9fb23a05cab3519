"""Training recipes: one typed dataclass, read from YAML and overridden by `key=value` arguments.

Every field is documented where it is declared (the docstring table below is what `docs/training.md` shows);
unknown keys, wrong types and out-of-range values are one-line errors naming the file or argument.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

import yaml

from .errors import UserError

METHODS = ("metaicl", "maml", "fomaml", "reptile", "ict", "multitask0")
MAML_FAMILY = ("maml", "fomaml", "reptile")
INNER_OPTIMIZERS = ("shared-adam-copy", "shared-adam-chain", "sgd", "adam")


@dataclass
class TrainConfig:
    """A meta-training recipe. Field comments are the documentation."""

    method: str = "metaicl"  # metaicl | maml | fomaml | reptile | ict | multitask0
    steps: int = 100  # meta-steps (outer optimizer updates)
    k: int = 16  # demonstrations per training instance (multitask0 forces 0)
    prompt: str = "direct"  # direct | channel (MetaICL's two scoring directions)
    train_labels: str = "gold"  # demonstrations' labels in training: gold | random | symbols (labels.py)
    bos: str = "auto"  # BOS first in every sequence: auto (where the tokenizer adds one, e.g. Gemma) | yes | no
    seed: int = 100  # seeds model-independent randomness: episodes, and torch
    lr: float = 1e-5  # outer learning rate (AdamW), after warmup decays linearly to 0
    warmup_steps: int = 0  # linear warmup of the outer learning rate
    weight_decay: float = 0.0  # outer AdamW weight decay (inner updates never decay)
    max_grad_norm: float = 1.0  # clip the (meta-)gradient to this L2 norm before the outer step; 0 = off
    adam_betas: tuple[float, float] = (0.9, 0.999)  # Adam betas of the outer optimizer (and of Adam inner steps)
    adam_eps: float = 1e-8  # Adam epsilon of the outer optimizer (and of Adam inner steps unless inner_adam_eps)
    tasks_per_step: int = 4  # "exploration tasks" sampled per meta-step
    support_size: int = 2  # instances per task in the support (exploration) batch
    query_size: int = 2  # instances per task in the query (validation) batch, disjoint from support
    inner_steps: int = 1  # gradient steps on the support batch per task (maml, fomaml, reptile)
    inner_lr: float = 1e-5  # learning rate of the inner steps
    inner_optimizer: str = "shared-adam-copy"  # shared-adam-copy | shared-adam-chain | sgd | adam (algorithms.py)
    inner_adam_eps: float | None = None  # Adam epsilon of the Adam inner steps only; null = adam_eps
    max_examples_per_task: int | None = None  # cap each training task's pool (limited-data setting); null = full
    lora_rank: int = 0  # LoRA adapter rank; 0 = full fine-tuning (every weight is meta-learned)
    lora_alpha: float = 16.0  # LoRA scaling numerator (updates are scaled by lora_alpha / lora_rank)
    lora_dropout: float = 0.0  # dropout on the LoRA path
    lora_targets: str = "all-linear"  # modules that get adapters: all-linear, or names such as q_proj,v_proj
    gradient_checkpointing: bool = False  # recompute each layer's activations in backward (less memory, more time)
    batch_tasks: bool = False  # metaicl/ict/multitask0: one forward and backward over all of a step's tasks
    checkpoint_every: int = 50  # write a checkpoint every N steps (and at the end); 0 = only at the end
    keep_checkpoints: int = 2  # how many recent checkpoints to keep
    eval_every: int = 0  # every N steps, score the validation tasks' dev files in context; 0 = off
    eval_k: int | None = None  # demonstrations for that validation; null = k
    eval_max_test: int = 16  # dev examples per validation task and seed
    eval_seeds: int = 1  # how many of the seeds 100, 13, 21, 42, 87 the validation uses
    eval_tasks: int | None = None  # validate on the first N test tasks of the split; null = all

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, sources: dict[str, str] | None = None) -> None:
        """Range and combination checks; `sources` names where each field was set (file or argument)."""
        sources = sources or {}

        def bad(field: str, why: str) -> UserError:
            source = sources.get(field, "recipe")
            where = "" if source.startswith(f"{field}=") else f"{source}: "  # a key=value argument names itself
            return UserError(f"{where}{field}={getattr(self, field)!r} {why}")

        for f in fields(self):
            value = getattr(self, f.name)
            numbers = value if isinstance(value, tuple) else (value,)
            if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
                raise bad(f.name, "must be a finite number")
        if self.method not in METHODS:
            raise bad("method", f"is not one of {list(METHODS)}")
        if self.prompt not in ("direct", "channel"):
            raise bad("prompt", "must be direct or channel")
        if self.bos not in ("auto", "yes", "no"):
            raise bad("bos", "must be auto, yes or no")
        if self.train_labels not in ("gold", "random", "symbols"):
            raise bad("train_labels", "must be gold, random or symbols")
        if self.train_labels != "gold" and self.method == "multitask0":
            raise bad("train_labels", "is not allowed with multitask0, which trains without demonstrations: there "
                      "are no demonstration labels to replace; use gold")
        if self.inner_optimizer == "shared-adam":
            raise bad("inner_optimizer", "is ambiguous: choose shared-adam-copy (inner steps start from the outer "
                      "AdamW's moments, private copies) or shared-adam-chain (inner steps write into them)")
        if self.inner_optimizer not in INNER_OPTIMIZERS:
            raise bad("inner_optimizer", f"is not one of {list(INNER_OPTIMIZERS)}")
        for name in ("steps", "tasks_per_step", "support_size", "query_size"):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        for name in ("k", "warmup_steps", "inner_steps", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.keep_checkpoints < 1:
            raise bad("keep_checkpoints", "must be at least 1")
        for name in ("lr", "inner_lr"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be > 0")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.adam_eps <= 0:
            field = "adam_eps" if self.adam_eps <= 0 else "weight_decay" if self.weight_decay < 0 else "max_grad_norm"
            raise bad(field, "must be > 0" if field == "adam_eps" else "must be >= 0")
        if self.inner_adam_eps is not None and not self.inner_adam_eps > 0:
            raise bad("inner_adam_eps", "must be > 0 (or null for adam_eps)")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise bad("adam_betas", "must be two numbers in [0, 1)")
        if self.max_examples_per_task is not None and self.max_examples_per_task < 2:
            raise bad("max_examples_per_task", "must be at least 2 (or null/full for the whole pool)")
        if self.lora_rank < 0:
            raise bad("lora_rank", "must be >= 0 (0 = full fine-tuning)")
        if self.lora_rank and not self.lora_alpha > 0:
            raise bad("lora_alpha", "must be > 0")
        if not 0 <= self.lora_dropout < 1:
            raise bad("lora_dropout", "must be in [0, 1)")
        if not self.lora_targets.strip():
            raise bad("lora_targets", "is empty; use all-linear or module names such as q_proj,v_proj")
        if self.eval_every < 0:
            raise bad("eval_every", "must be >= 0 (0 = off)")
        if self.eval_k is not None and self.eval_k < 0:
            raise bad("eval_k", "must be >= 0 (or null for k)")
        if self.eval_max_test < 1:
            raise bad("eval_max_test", "must be at least 1")
        if not 1 <= self.eval_seeds <= 5:
            raise bad("eval_seeds", "must be between 1 and 5")
        if self.eval_tasks is not None and self.eval_tasks < 1:
            raise bad("eval_tasks", "must be at least 1 (or null for all test tasks)")
        if self.method == "reptile" and self.inner_steps < 1:
            raise bad("inner_steps", "must be at least 1 for reptile (its update is theta - adapted theta)")
        if self.method == "reptile" and self.inner_optimizer == "shared-adam-chain":
            raise bad("inner_optimizer", "does not fit reptile: its inner gradients would fill the moments its "
                      "pseudo-gradient is stepped with; use shared-adam-copy, adam or sgd")

    @property
    def demonstrations(self) -> int:
        """k actually used: multi-task zero-shot trains without demonstrations."""
        return 0 if self.method == "multitask0" else self.k

    def ignored_fields(self) -> dict[str, str]:
        """Fields set away from their default that this recipe never reads -> why. Not an error: compare shares one
        recipe between methods that read different fields."""
        ignored = {}
        if self.inner_adam_eps is not None:
            if self.method not in MAML_FAMILY or self.inner_steps == 0:
                ignored["inner_adam_eps"] = (f"{self.method} takes no inner steps here"
                                             + (" (inner_steps=0)" if self.method in MAML_FAMILY else ""))
            elif self.inner_optimizer == "sgd":
                ignored["inner_adam_eps"] = "the inner optimizer is sgd"
        if self.batch_tasks and self.method in MAML_FAMILY:
            ignored["batch_tasks"] = f"{self.method} adapts to each task separately"
        return ignored

    def unused_fields(self) -> list[str]:
        """ignored_fields as one line each, for a note before training."""
        def shown(value):
            return str(value).lower() if isinstance(value, bool) else value

        return [f"{name}={shown(getattr(self, name))} has no effect: {why}"
                for name, why in self.ignored_fields().items()]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["adam_betas"] = list(self.adam_betas)
        return data


_FIELDS = {f.name: f for f in fields(TrainConfig)}


def _coerce(name: str, value: object, where: str) -> object:
    """Check/convert one value to the field's declared type."""
    hint = typing.get_type_hints(TrainConfig)[name]
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("full", "null", "none"))):
        return None
    if optional:  # `int | None` or `float | None`: check the value against the type it is not None as
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if hint is bool or hint == "bool":
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:  # adam_betas
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value)
        value = tuple(float(v) for v in value) if ok else value
    if not ok:
        raise UserError(f"{where}: {name} must be {getattr(hint, '__name__', str(hint))}, got {value!r}")
    return value


def packaged_recipes() -> list[str]:
    folder = resources.files("maml_en_llm") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve_recipe(recipe: str | Path) -> Path:
    """A YAML path, or the name of a recipe shipped with the package (`maml`, `metaicl`, `cpu-demo`, ...)."""
    path = Path(recipe).expanduser()
    if path.is_file():
        return path
    packaged = resources.files("maml_en_llm") / "recipes" / f"{recipe}.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    raise UserError(f"{recipe}: recipe not found; give a YAML path or one of {packaged_recipes()}")


def parse_overrides(items: list[str]) -> dict:
    """`key=value` strings -> dict; values are parsed as YAML scalars (`1e-5`, `true`, `null`, `[0.9, 0.99]`)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"argument {item!r}: expected key=value (e.g. steps=100)")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def make_config(recipe: Path | None = None, overrides: dict | None = None, **fixed) -> TrainConfig:
    """Defaults <- YAML recipe <- `fixed` (e.g. method from --method) <- key=value overrides."""
    merged: dict = {}
    sources: dict = {}
    if recipe is not None:
        path = resolve_recipe(recipe)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise UserError(f"{path}{line}: malformed YAML; fix the recipe") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: a recipe is a mapping of field: value")
        merged.update(loaded)
        sources.update({k: str(path) for k in loaded})
    merged.update({k: v for k, v in fixed.items() if v is not None})
    sources.update({k: f"--{k}" for k, v in fixed.items() if v is not None})
    for key, value in (overrides or {}).items():
        merged[key] = value
        sources[key] = f"{key}={value}"
    values = {}
    for key, value in merged.items():
        if key not in _FIELDS:
            raise UserError(f"{sources[key]}: unknown recipe field {key!r}; known: {', '.join(_FIELDS)}")
        values[key] = _coerce(key, value, sources[key])
    config = TrainConfig.__new__(TrainConfig)
    for name, field in _FIELDS.items():
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        setattr(config, name, values.get(name, default))
    config.validate(sources)
    return config


def save_config(config: TrainConfig, path: Path) -> None:
    from .paths import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))
