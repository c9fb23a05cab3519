"""Option scoring equals a brute-force log-softmax over each unpadded sequence (shared or whole, batched or not,
direct or channel, truncated, sliding-window, bf16), and it runs each unique token once (counted at the model)."""

import math
import random

import pytest
import torch

from maml_en_llm.prompts import PromptFormat, encode_prefix, make_tokenize, scoring_sequences
from maml_en_llm.scoring import predict, score_options, score_sequences, score_shared, unique_tokens
from maml_en_llm.tasks import Example, load_demonstrations, load_test


@pytest.fixture(scope="module")
def model(tiny_model_dir, device):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval().to(device)


@pytest.fixture(scope="module")
def sliding_model(device):
    """A 2-layer Gemma 3 whose first layer attends over a window of 8 tokens."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=2048,
                              pad_token_id=258, eos_token_id=257, bos_token_id=256)
    return Gemma3ForCausalLM(config).eval().to(device)


def brute_force_loss(model, context, target):
    """-mean log p(target token | everything before it), from one unpadded forward pass and a hand log-softmax."""
    ids = torch.tensor([context + target], device=model.device)
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    start = len(context)
    picked = [log_probs[pos - 1, ids[0, pos]] for pos in range(start, start + len(target))]
    return -float(torch.stack(picked).mean())


class TokenCounter:
    """Counts the real (unmasked) tokens each forward pass feeds the model: the new columns of its attention mask."""

    def __init__(self, model):
        self.total, self.calls = 0, 0
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        input_ids = args[0] if args else kwargs["input_ids"]
        mask = kwargs.get("attention_mask")
        self.total += int(input_ids.numel() if mask is None else mask[:, -input_ids.shape[1]:].sum())
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def random_sequences(rng, prefix, n, body=(0, 4), target=(1, 4)):
    return [(prefix + [rng.randrange(250) for _ in range(rng.randint(*body))],
             [rng.randrange(250) for _ in range(rng.randint(*target))]) for _ in range(n)]


@pytest.mark.parametrize("method", ["direct", "channel"])
@pytest.mark.parametrize("task,k", [("cls_d", 2), ("mc_pick", 2), ("cls_c", 0)])
def test_scores_equal_brute_force(model, tokenizer, tiny_data_dir, method, task, k):
    fmt = PromptFormat(method)
    tokenize = make_tokenize(tokenizer)
    prefix = encode_prefix(tokenize, load_demonstrations(tiny_data_dir, task, 13, k), fmt)
    examples = load_test(tiny_data_dir, task, 13, max_test=4)
    for share in (True, False):
        scores = score_options(model, tokenizer, prefix, k, examples, fmt, batch_size=5, share=share)
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
        shared, _ = score_shared(model, [97], sequences, pad_id=258, batch_size=2)
        assert model.training  # restored
    finally:
        model.eval()
    expected = [brute_force_loss(model, c, t) for c, t in sequences]
    assert losses == pytest.approx(expected, abs=1e-5) and shared == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError):
        score_sequences(model, sequences, pad_id=258, batch_size=0)
    with pytest.raises(ValueError):
        score_shared(model, [97], sequences, pad_id=258, batch_size=0)


def test_each_unique_token_runs_once_direct(model, tokenizer):
    """Direct: the demonstrations and the inputs' separator once, each distinct test input once, the options'
    common "\\n" once per input, and each option's other tokens but its last once per input."""
    tokenize = make_tokenize(tokenizer)
    fmt = PromptFormat("direct")
    demos = [Example("t", "alpha", "yes", ("yes", "no")), Example("t", "beta gamma", "no", ("yes", "no"))]
    options = ("yes", "no", "maybe not")
    tests = [Example("t", text, "yes", options) for text in ("fine", "awful movie", "fine", "ok")]  # "fine" twice
    prefix = encode_prefix(tokenize, demos, fmt)
    stats = {}
    with TokenCounter(model) as counter:
        score_options(model, tokenizer, prefix, 2, tests, fmt, batch_size=3, stats=stats)
    inputs = {tuple(scoring_sequences(tokenize, prefix, 2, e, fmt)[0][0][len(prefix):]) for e in tests}
    option_ids = [tokenize("\n" + o) for o in options]
    assert all(ids[0] == 10 for ids in option_ids)  # the shared "\n"
    assert all(x[:2] == (256, 10) for x in inputs)  # the shared "\\n\\n\\n" separator
    per_input = 1 + sum(len(ids) - 2 for ids in option_ids)
    expected = len(prefix) + 2 + sum(len(x) - 2 for x in inputs) + len(inputs) * per_input
    assert counter.total == stats["tokens_processed"] == expected
    all_sequences = [s for e in tests for s in scoring_sequences(tokenize, prefix, 2, e, fmt)]
    assert stats["unique_tokens"] == unique_tokens(all_sequences)
    assert stats["tokens"] == sum(len(c) + len(t) for c, t in all_sequences)
    # every unique token but each option's last one
    assert stats["tokens_processed"] == stats["unique_tokens"] - len(inputs) * len(options)
    # whole-sequence scoring runs every token of every sequence
    with TokenCounter(model) as counter:
        score_options(model, tokenizer, prefix, 2, tests, fmt, batch_size=3, share=False)
    assert counter.total == stats["tokens"]


def test_each_unique_token_runs_once_channel(model, tokenizer):
    """Channel: the demonstrations and the options' separator once, each distinct option once (shared by all
    examples), then per option the inputs' common "\\n" once and each test input but its last token."""
    tokenize = make_tokenize(tokenizer)
    fmt = PromptFormat("channel")
    demos = [Example("t", "alpha", "yes", ("yes", "no"))]
    options = ("yes", "no", "maybe not")
    tests = [Example("t", text, "yes", options) for text in ("fine", "awful movie", "ok")]
    prefix = encode_prefix(tokenize, demos, fmt)
    stats = {}
    with TokenCounter(model) as counter:
        score_options(model, tokenizer, prefix, 1, tests, fmt, batch_size=2, stats=stats)
    option_ids = [tokenize("\n\n\n" + o) for o in options]
    input_ids = [tokenize("\n" + e.input) for e in tests]
    assert all(o[:2] == [256, 10] for o in option_ids)  # the shared "\\n\\n\\n" separator
    per_option = 1 + sum(len(x) - 2 for x in input_ids)
    expected = len(prefix) + 2 + sum(len(o) - 2 for o in option_ids) + len(options) * per_option
    assert counter.total == stats["tokens_processed"] == expected
    assert stats["tokens_processed"] == stats["unique_tokens"] - len(options) * len(tests)


def test_truncated_prefix_falls_back_to_whole_sequences(model, tokenizer):
    """A sequence whose demonstrations were cut by the length cap is scored whole; the rest share; all equal
    brute force (1e-5, float32)."""
    tokenize = make_tokenize(tokenizer)
    for method in ("direct", "channel"):
        fmt = PromptFormat(method)
        demos = [Example("t", "a" * 240, "yes", ("yes", "no")), Example("t", "b" * 240, "no", ("yes", "no"))]
        tests = [Example("t", text, "yes", ("yes", "no", "maybe not")) for text in ("fine", "awful movie", "z" * 240)]
        prefix = encode_prefix(tokenize, demos, fmt)
        sequences = [s for e in tests for s in scoring_sequences(tokenize, prefix, 2, e, fmt)]
        assert sum(c[:len(prefix)] != prefix for c, _ in sequences) == 3  # the long example's three options
        stats = {}
        losses = score_options(model, tokenizer, prefix, 2, tests, fmt, batch_size=2, tokenize=tokenize, stats=stats)
        expected = [brute_force_loss(model, c, t) for c, t in sequences]
        assert [x for row in losses for x in row] == pytest.approx(expected, abs=1e-5)
        whole = sum(len(c) + len(t) for c, t in sequences if c[:len(prefix)] != prefix)
        assert stats["tokens_processed"] > whole


def test_bos_prefix_and_zero_shot_share_correctly(model, tokenizer):
    tokenize = make_tokenize(tokenizer)
    tests = [Example("t", text, "x", ("x", "yy")) for text in ("ab", "", "cde")]  # an empty input too
    for fmt, demos in ((PromptFormat("direct", bos_id=257), []), (PromptFormat("direct"), []),
                       (PromptFormat("channel", bos_id=257), [Example("t", "q", "x", ("x", "yy"))]),
                       (PromptFormat("channel"), [])):
        prefix = encode_prefix(tokenize, demos, fmt)
        losses = score_options(model, tokenizer, prefix, len(demos), tests, fmt, batch_size=4)
        for example, row in zip(tests, losses):
            sequences = scoring_sequences(tokenize, prefix, len(demos), example, fmt)
            if fmt.method == "channel" and not example.input:  # nothing to score: NaN, the first option wins
                assert all(math.isnan(x) for x in row) and predict(row) == 0
                continue
            assert row == pytest.approx([brute_force_loss(model, c, t) if c else brute_force_loss(model, t[:1], t[1:])
                                         for c, t in sequences], abs=1e-5)


def test_sliding_window_model(sliding_model, monkeypatch):
    """Longer than the window: A + B run contiguously over the prefix (exact); within it: fully shared. Test inputs
    (A) of different lengths, each with three options (B), as in direct scoring."""
    from maml_en_llm import scoring

    contiguous_calls = []
    original = scoring._score_contiguous
    monkeypatch.setattr(scoring, "_score_contiguous", lambda *a: contiguous_calls.append(1) or original(*a))
    rng = random.Random(1)
    for prefix_length, input_lengths, option_lengths, past_window in ((5, (1, 3, 6, 2), (2, 5), True),
                                                                      (5, (1, 0, 3), (1, 2), True),
                                                                      (3, (1, 0, 2), (1, 3), False)):
        prefix = [rng.randrange(250) for _ in range(prefix_length)]
        sequences = []
        for n in input_lengths:
            test_input = [rng.randrange(250) for _ in range(n)]
            sequences += [(prefix + test_input, [rng.randrange(250) for _ in range(rng.randint(*option_lengths))])
                          for _ in range(3)]
        contiguous_calls.clear()
        shared, _ = score_shared(sliding_model, prefix, sequences, pad_id=258, batch_size=4)
        assert bool(contiguous_calls) is past_window
        assert shared == pytest.approx([brute_force_loss(sliding_model, c, t) for c, t in sequences], abs=1e-5)
        assert score_sequences(sliding_model, sequences, 258, 4) == pytest.approx(shared, abs=1e-5)


def test_bfloat16_model_scores_close_to_float32(tiny_model_dir, tokenizer, tiny_data_dir, device):
    from transformers import AutoModelForCausalLM

    bf16 = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval().to(device)
    fp32 = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval().to(device)
    fmt = PromptFormat("direct")
    tokenize = make_tokenize(tokenizer)
    prefix = encode_prefix(tokenize, load_demonstrations(tiny_data_dir, "mc_pick", 13, 2), fmt)
    examples = load_test(tiny_data_dir, "mc_pick", 13, max_test=4)
    low = score_options(bf16, tokenizer, prefix, 2, examples, fmt, batch_size=3)
    reference = score_options(fp32, tokenizer, prefix, 2, examples, fmt, batch_size=3, share=False)
    assert max(abs(a - b) for xs, ys in zip(low, reference) for a, b in zip(xs, ys)) < 0.05


def test_empty_target_gets_nan_and_first_option_wins(model):
    losses, _ = score_shared(model, [97, 98], [([97, 98, 99], []), ([97, 98], [10, 99])], pad_id=258, batch_size=2)
    assert math.isnan(losses[0]) and losses[1] == pytest.approx(brute_force_loss(model, [97, 98], [10, 99]), abs=1e-5)
    assert predict([math.nan, math.nan]) == 0
    assert predict([math.nan, 2.0, 1.0]) == 2


def test_unique_tokens_counts_trie_nodes():
    assert unique_tokens([([1, 2, 3], [4]), ([1, 2, 3], [5, 6]), ([1, 7], [4])]) == 4 + 2 + 2
    assert unique_tokens([([1, 2], [3]), ([1, 2], [3])]) == 3  # duplicates count once
    assert unique_tokens([]) == 0


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
