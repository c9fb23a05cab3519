"""Fingerprint what a transformers version makes of a model: token ids, scoring losses (no gradients, the 2D
padding mask) and training losses and gradient norm (gradients on, `lm.training_mask`), on a fixed padded batch.
Run it under two transformers versions, then compare the two files.

    python benchmarks/version_fingerprint.py --json fp-new.json
    PYTHONPATH=OLD_TRANSFORMERS_DIR MAML_EN_LLM_CACHE=OLD_CACHE python benchmarks/version_fingerprint.py \\
        --json fp-old.json
    python benchmarks/version_fingerprint.py --compare fp-old.json fp-new.json

The second command loads transformers from a folder filled by `pip install --target` (docs/models.md), and converts
the packaged GGUF again under that version into its own cache. `--compare` exits 1 when token ids differ or a
number differs by more than --atol.
"""

from __future__ import annotations

import argparse
import json
import sys

TEXTS = (
    "Review: the film was a delight from start to finish\nSentiment: positive",
    "Question: Which is heavier, a kilogram of feathers or a kilogram of iron?\nAnswer: neither",
    "Premise: A man is playing a guitar.\nHypothesis: Someone makes music.\n\nentailment",
    " h\u00e9llo w\u00f6rld \u2014 caf\u00e9\n\n\n\tx",
)


def fingerprint(model_name: str) -> dict:
    import torch
    import transformers

    from maml_en_llm.lm import collate, sequence_losses
    from maml_en_llm.models import load_model_and_tokenizer

    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(model_name)
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS]
    batch = collate([(row[:-3], row[-3:]) for row in ids], tokenizer.pad_token_id)  # widths differ: left pads
    with torch.no_grad():
        scored = sequence_losses(model, batch)
    trained = sequence_losses(model, batch)
    trained.mean().backward()
    grad_norm = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    return {"transformers": transformers.__version__, "model": model_name, "token_ids": ids,
            "scoring_losses": scored.tolist(), "training_losses": trained.detach().tolist(),
            "gradient_norm": float(grad_norm)}


def compare(a: dict, b: dict, atol: float) -> list[str]:
    """Differences beyond atol between two fingerprints, as lines (empty when they agree)."""
    problems = [] if a["token_ids"] == b["token_ids"] else ["token ids differ"]
    for key in ("scoring_losses", "training_losses"):
        worst = max(abs(x - y) for x, y in zip(a[key], b[key]))
        if len(a[key]) != len(b[key]) or worst > atol:
            problems.append(f"{key} differ by up to {worst:.3g}")
    if abs(a["gradient_norm"] - b["gradient_norm"]) > atol * max(1.0, abs(a["gradient_norm"])):
        problems.append(f"gradient_norm {a['gradient_norm']:.6g} vs {b['gradient_norm']:.6g}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--json", help="write the fingerprint here")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two fingerprint files")
    parser.add_argument("--atol", type=float, default=1e-5)
    args = parser.parse_args(argv)
    if args.compare:
        a, b = (json.loads(open(path).read()) for path in args.compare)
        problems = compare(a, b, args.atol)
        print(f"transformers {a['transformers']} vs {b['transformers']} on {a['model']}: "
              + ("; ".join(problems) if problems else f"same token ids, losses and gradient norm within {args.atol}"))
        return 1 if problems else 0
    result = fingerprint(args.model)
    text = json.dumps(result, indent=1)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
