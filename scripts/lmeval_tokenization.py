"""How often lm-eval's tokenization of an exported task differs from MetaICL's (docs/lm-eval.md).

For every (test task, seed, test example, option) of a split, builds the scored sequence twice, tokenization only:
MetaICL's way (each piece on its own, ids concatenated: `prompts.encode_prefix` + `prompts.encode_options`) and
lm-eval's way (the context as one string; the option = ids of context + "\\n" + option past the context's ids).
Prints the share of sequences whose ids differ, whose option ids differ, and that MetaICL's length caps would cut.

    python scripts/lmeval_tokenization.py --split bb_hr_to_lr --k 4 --model smollm2-135m [--data-dir DIR]
"""

from __future__ import annotations

import argparse

from maml_en_llm.evaluate import load_eval_data
from maml_en_llm.models import load_tokenizer
from maml_en_llm.prompts import (MAX_LENGTH_PER_EXAMPLE, PromptFormat, encode_options, encode_prefix, make_tokenize,
                                 sequence_cap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", required=True)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seeds", default="100,13")
    parser.add_argument("--max-test", type=int, default=None)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model)
    tokenize = make_tokenize(tokenizer)
    fmt = PromptFormat("direct")
    data = load_eval_data(args.data_dir, args.split, args.k, [int(s) for s in args.seeds.split(",")], args.max_test)
    total = differ = option_differ = capped = 0
    for cell in data.cells:
        prefix = encode_prefix(tokenize, cell.demonstrations, fmt)
        context_text = "".join(f"{d.input}\n{d.output}\n\n\n" for d in cell.demonstrations)
        for example in cell.test:
            context = context_text + example.input
            context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
            pieces = encode_options(tokenize, example, fmt, is_first=not prefix)
            for option, (prompt_side, scored_side) in zip(example.options, pieces):
                whole = tokenizer(context + "\n" + option, add_special_tokens=False)["input_ids"]
                joint = (context_ids, whole[len(context_ids):])
                ours = (prefix + prompt_side, scored_side)
                total += 1
                differ += joint[0] + joint[1] != ours[0] + ours[1]
                option_differ += joint[1] != ours[1]
                longest_piece = max([len(tokenize(d.input)) for d in cell.demonstrations] + [len(prompt_side)])
                capped += (len(ours[0]) + len(ours[1]) > sequence_cap(args.k)
                           or longest_piece > MAX_LENGTH_PER_EXAMPLE - 2)
    print(f"{args.model} on {data.split.name}, k={args.k}, seeds {args.seeds}: {total} scored sequences; ids differ "
          f"in {100 * differ / total:.1f}%, option ids differ in {100 * option_differ / total:.1f}%, MetaICL's "
          f"length caps bind in {100 * capped / total:.1f}%")


if __name__ == "__main__":
    main()
