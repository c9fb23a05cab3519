"""Option scoring equals a brute-force log-softmax over each unpadded sequence, batched or not, direct or channel."""

import pytest
import torch

from maml_en_llm.prompts import PromptFormat, encode_prefix, make_tokenize, scoring_sequences
from maml_en_llm.scoring import predict, score_options, score_sequences
from maml_en_llm.tasks import load_demonstrations, load_test


@pytest.fixture(scope="module")
def model(tiny_model_dir, device):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval().to(device)


def brute_force_loss(model, context, target):
    """-mean log p(target token | everything before it), from one unpadded forward pass and a hand log-softmax."""
    ids = torch.tensor([context + target], device=model.device)
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    start = len(context)
    picked = [log_probs[pos - 1, ids[0, pos]] for pos in range(start, start + len(target))]
    return -float(torch.stack(picked).mean())


@pytest.mark.parametrize("method", ["direct", "channel"])
@pytest.mark.parametrize("task,k", [("cls_d", 2), ("mc_pick", 2), ("cls_c", 0)])
def test_scores_equal_brute_force(model, tokenizer, tiny_data_dir, method, task, k):
    fmt = PromptFormat(method)
    tokenize = make_tokenize(tokenizer)
    prefix = encode_prefix(tokenize, load_demonstrations(tiny_data_dir, task, 13, k), fmt)
    examples = load_test(tiny_data_dir, task, 13, max_test=4)
    scores = score_options(model, tokenizer, prefix, k, examples, fmt, batch_size=5)
    assert [len(s) for s in scores] == [len(e.options) for e in examples]
    for example, option_scores in zip(examples, scores):
        sequences = scoring_sequences(tokenize, prefix, k, example, fmt)
        expected = [brute_force_loss(model, context, target) for context, target in sequences]
        assert option_scores == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("method", ["direct", "channel"])
def test_batched_equals_one_at_a_time(model, tokenizer, tiny_data_dir, method):
    fmt = PromptFormat(method)
    tokenize = make_tokenize(tokenizer)
    prefix = encode_prefix(tokenize, load_demonstrations(tiny_data_dir, "mc_pick", 100, 3), fmt)
    examples = load_test(tiny_data_dir, "mc_pick", 100)  # per-example options of varied lengths
    one_by_one = score_options(model, tokenizer, prefix, 3, examples, fmt, batch_size=1)
    for batch_size in (3, 16, 1000):
        batched = score_options(model, tokenizer, prefix, 3, examples, fmt, batch_size=batch_size)
        assert max(abs(a - b) for xs, ys in zip(batched, one_by_one) for a, b in zip(xs, ys)) < 1e-5


def test_score_sequences_keeps_input_order_and_training_mode(model):
    sequences = [([97] * n, [10, 98 + n % 3]) for n in (3, 30, 1, 12, 7)]
    model.train()
    try:
        losses = score_sequences(model, sequences, pad_id=258, batch_size=2)
        assert model.training  # restored
    finally:
        model.eval()
    assert losses == pytest.approx([brute_force_loss(model, c, t) for c, t in sequences], abs=1e-5)
    with pytest.raises(ValueError):
        score_sequences(model, sequences, pad_id=258, batch_size=0)


def test_stats_count_real_tokens(model, tokenizer, tiny_data_dir):
    fmt = PromptFormat("direct")
    tokenize = make_tokenize(tokenizer)
    examples = load_test(tiny_data_dir, "cls_d", 21, max_test=3)
    stats = {}
    score_options(model, tokenizer, [], 0, examples, fmt, batch_size=4, stats=stats)
    sequences = [s for e in examples for s in scoring_sequences(tokenize, [], 0, e, fmt)]
    assert stats["sequences"] == len(sequences) == 9
    assert stats["tokens"] == sum(len(c) + len(t) for c, t in sequences)
    assert stats["seconds"] > 0


def test_predict_takes_lowest_loss_first_on_ties():
    assert predict([2.0, 1.0, 3.0]) == 1
    assert predict([1.5, 0.5, 0.5]) == 1
    assert predict([0.0]) == 0


@pytest.mark.parametrize("method", ["direct", "channel"])
def test_prefix_cache_gives_the_same_losses(tiny_model_dir, method, device):
    """Scoring remainders over the demonstrations' KV cache equals scoring whole sequences (1e-5, float32),
    including an example long enough that its prefix is cut by the cap (whole-sequence fallback)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maml_en_llm.prompts import PromptFormat, encode_prefix, make_tokenize
    from maml_en_llm.scoring import score_options
    from maml_en_llm.tasks import Example

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).to(device)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenize = make_tokenize(tokenizer)
    fmt = PromptFormat(method)
    demos = [Example("t", "a" * 240, "yes", ("yes", "no")), Example("t", "bad", "no", ("yes", "no"))]
    tests = [Example("t", text, "yes", ("yes", "no", "maybe not")) for text in ("fine", "awful movie", "z" * 240)]
    prefix = encode_prefix(tokenize, demos, fmt)
    cached = score_options(model, tokenizer, prefix, 2, tests, fmt, batch_size=2, tokenize=tokenize)
    whole = score_options(model, tokenizer, prefix, 2, tests, fmt, batch_size=2, tokenize=tokenize, prefix_cache=False)
    for row_cached, row_whole in zip(cached, whole):
        assert row_cached == pytest.approx(row_whole, abs=1e-5)
