"""`maml-en-llm recipes`: list the packaged recipes and show one with every field's meaning.

The meaning of a recipe field is written once, where `TrainConfig` declares it: a `help` entry in the field's
metadata, else the comment at the end of its line, else the comment lines right above it. This module reads
those, so a field added to `TrainConfig` shows up here (and in `recipes show`) with no other change.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
from importlib import resources

import yaml

from .config import TrainConfig, make_config, packaged_recipes, resolve_recipe


def field_docs(cls: type = TrainConfig) -> dict[str, str]:
    """{field name: its documentation} for every dataclass field of `cls`, in declaration order ("" if none)."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments: dict[int, str] = {}  # 1-based line -> comment text
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    spans: dict[str, tuple[int, int]] = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            spans[node.target.id] = (node.lineno, node.end_lineno or node.lineno)
    docs = {}
    for field in dataclasses.fields(cls):
        text = field.metadata.get("help", "")
        if not text and field.name in spans:
            first, last = spans[field.name]
            text = " ".join(comments[n] for n in range(first, last + 1) if n in comments)
            above, line = [], first - 1
            while not text and line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, comments.get(line, ""))
                line -= 1
            text = text or " ".join(above)
        docs[field.name] = text.strip()
    return docs


def recipe_summary(name: str) -> str:
    """The first comment line of a packaged recipe (what it is for)."""
    text = (resources.files("maml_en_llm") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def list_recipes() -> str:
    names = packaged_recipes()
    width = max(len(n) for n in names)
    rows = [f"  {name:<{width}}  {recipe_summary(name)}" for name in names]
    return ("Packaged recipes (use with `train --config NAME` or `compare --config NAME`):\n" + "\n".join(rows)
            + "\n\n`maml-en-llm recipes show NAME` prints one with each field's meaning.")


def _value(value: object) -> str:
    return yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True).strip() \
        .removesuffix("...").strip()


def show_recipe(recipe: str) -> str:
    """The resolved recipe (defaults filled in) as YAML, each field followed by its meaning; fields the file sets
    are marked, so a user sees what the recipe changes and what it leaves at the default."""
    path = resolve_recipe(recipe)
    config = make_config(path)
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    docs = field_docs()
    header = [f"# recipe {recipe} ({path.name})"]
    summary = next((line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")), "")
    if summary:
        header.append(summary)
    header.append("# fields marked * are set by the recipe; the others are defaults. Override any with key=value.")
    rows = []
    for name, value in config.to_dict().items():
        rows.append((f"{name}: {_value(value)}", "*" if name in loaded else " ", docs.get(name, "")))
    width = max(len(r[0]) for r in rows)
    return "\n".join(header + [f"{text:<{width}}  #{mark} {doc}" for text, mark, doc in rows])
