"""Golden token ids for MetaICL's prompt rules. The test tokenizer maps byte b to id b and "\n\n" to 256,
so every expected list below can be read as text: 10 = "\n", 32 = " ", 97.. = "a"..; 256 = "\n\n"."""

import pytest

from maml_en_llm.prompts import (
    PromptFormat, encode_prefix, make_tokenize, scoring_sequences, sequence_cap, training_sequence,
)
from maml_en_llm.tasks import Example

NL2 = 256


def ex(input_, output, options=("x", "y")):
    return Example("t", input_, output, tuple(options))


@pytest.fixture()
def tok(tokenizer):
    return make_tokenize(tokenizer)


def b(text):
    return list(text.encode())


def test_direct_newline_demos_and_options(tok):
    fmt = PromptFormat("direct", newlines=True)
    prefix = encode_prefix(tok, [ex("ab", "x"), ex("", "y")], fmt)
    # demo 1: tok("ab") + tok("\nx"); demo 2 has an empty input, so only "\n\n" before it.
    assert prefix == b("ab") + b("\nx") + [NL2] + b("\ny")
    seqs = scoring_sequences(tok, prefix, 2, ex("cd", "y"), fmt)
    assert seqs == [(prefix + [NL2, 10] + b("cd"), b("\nx")), (prefix + [NL2, 10] + b("cd"), b("\ny"))]


def test_pieces_are_tokenized_separately(tok, tokenizer):
    fmt = PromptFormat("direct")
    # an input ending in "\n" followed by the "\n"-prefixed output: jointly "\n\n" would merge into one token
    context, target = scoring_sequences(tok, [], 0, ex("a\n", "x"), fmt)[0]
    assert context + target == b("a\n") + b("\nx")
    assert tokenizer("a\n\nx", add_special_tokens=False)["input_ids"] == [97, NL2, 120]


def test_channel_newline_swaps_roles(tok):
    fmt = PromptFormat("channel", newlines=True)
    prefix = encode_prefix(tok, [ex("ab", "x"), ex("cd", "y")], fmt)
    assert prefix == b("x") + b("\nab") + [NL2, 10] + b("y") + b("\ncd")
    seqs = scoring_sequences(tok, prefix, 2, ex("ef", "x"), fmt)
    # the option is the prompt side, the input is scored
    assert seqs == [(prefix + [NL2, 10] + b("x"), b("\nef")), (prefix + [NL2, 10] + b("y"), b("\nef"))]


def test_direct_space_format(tok):
    fmt = PromptFormat("direct", newlines=False)
    prefix = encode_prefix(tok, [ex("ab", "x")], fmt)
    assert prefix == b("ab") + b(" x")
    seqs = scoring_sequences(tok, prefix, 1, ex("cd", "x"), fmt)
    assert seqs == [(prefix + b(" cd"), b(" x")), (prefix + b(" cd"), b(" y"))]


def test_channel_space_format(tok):
    fmt = PromptFormat("channel", newlines=False)
    prefix = encode_prefix(tok, [ex("ab", "x"), ex("cd", "y")], fmt)
    assert prefix == b("x") + b(" ab") + b(" y") + b(" cd")
    seqs = scoring_sequences(tok, prefix, 2, ex("ef", "x"), fmt)
    assert seqs == [(prefix + b(" x"), b(" ef")), (prefix + b(" y"), b(" ef"))]


@pytest.mark.parametrize("method", ["direct", "channel"])
def test_zero_shot_has_no_separator(tok, method):
    fmt = PromptFormat(method)
    seqs = scoring_sequences(tok, [], 0, ex("cd", "x"), fmt)
    if method == "direct":
        assert seqs[0] == (b("cd"), b("\nx"))
    else:
        assert seqs[0] == (b("x"), b("\ncd"))


def test_demonstration_input_cut_to_per_example_cap(tok):
    fmt = PromptFormat("direct")
    long_input = "a" * 300 + "z"
    prefix = encode_prefix(tok, [ex(long_input, "xy", ("xy", "q"))], fmt)
    # output "\nxy" is 3 tokens, so the input keeps its first 256 - 2 - 3 = 251 tokens
    assert prefix == b("a" * 251) + b("\nxy")


def test_test_input_cut_by_longest_option(tok):
    fmt = PromptFormat("direct")
    seqs = scoring_sequences(tok, [], 0, ex("b" * 300, "x", ("x", "longer")), fmt)
    # longest option "\nlonger" is 7 tokens: input keeps 256 - 2 - 7 = 247
    assert [c for c, _ in seqs] == [b("b" * 247)] * 2
    assert [t for _, t in seqs] == [b("\nx"), b("\nlonger")]


def test_channel_cuts_the_scored_input_not_the_output(tok):
    fmt = PromptFormat("channel")
    prefix = encode_prefix(tok, [ex("c" * 300, "x")], fmt)
    # channel demo = tok(output) + tok("\n" + input) with the input part cut to 256 - 2 - len(tok("x"))
    assert prefix == b("x") + (b("\n" + "c" * 300))[:253]


def test_sequence_cap_drops_from_the_left_and_never_cuts_the_option(tok):
    fmt = PromptFormat("direct")
    assert [sequence_cap(k) for k in (0, 1, 2, 4, 16)] == [256, 256, 512, 1024, 1024]
    prefix = encode_prefix(tok, [ex("d" * 200, "x")], fmt)
    context, target = scoring_sequences(tok, prefix, 1, ex("e" * 100, "x", ("x", "yyyy")), fmt)[1]
    full_context = prefix + [NL2, 10] + b("e" * 100)
    assert target == b("\nyyyy")
    assert len(context) + len(target) == 256
    assert context == full_context[len(full_context) + len(target) - 256:]


def test_training_sequence(tok):
    fmt = PromptFormat("direct")
    context, target = training_sequence(tok, [ex("ab", "x"), ex("cd", "y")], ex("ef", "y"), fmt)
    assert context == b("ab") + b("\nx") + [NL2, 10] + b("cd") + b("\ny") + [NL2, 10] + b("ef")
    assert target == b("\ny")
    # k = 0: the target is first, no separator; channel scores the input
    assert training_sequence(tok, [], ex("ef", "y"), fmt) == (b("ef"), b("\ny"))
    assert training_sequence(tok, [], ex("ef", "y"), PromptFormat("channel")) == (b("y"), b("\nef"))


def test_training_sequence_truncates_left_to_cap(tok):
    fmt = PromptFormat("direct")
    demos = [ex("g" * 250, "x"), ex("h" * 250, "y")]
    context, target = training_sequence(tok, demos, ex("i" * 250, "x"), fmt)
    assert len(context) + len(target) == 512 and target == b("\nx")
    assert context[-250:] == b("i" * 250)


def test_free_form_output_gets_no_newline_like_metaicl(tok):
    # MetaICL's no_label test is all(o == "" for o in options): true for [] (free-form training data)
    fmt = PromptFormat("direct")
    assert training_sequence(tok, [ex("ab", "x", ())], ex("cd", "y", ()), fmt) == (b("ab") + b("x") + [NL2, 10] + b("cd"), b("y"))


def test_instruction_comes_first_and_makes_demos_non_first(tok):
    fmt = PromptFormat("direct")
    prefix = encode_prefix(tok, [ex("ab", "x")], fmt, instruction="Do it.")
    assert prefix == b("Do it.") + [NL2, 10] + b("ab") + b("\nx")
    context, target = training_sequence(tok, [], ex("cd", "x"), fmt, instruction="Do it.")
    assert context == b("Do it.") + [NL2, 10] + b("cd") and target == b("\nx")


def test_unknown_method_rejected():
    with pytest.raises(ValueError):
        PromptFormat("sideways")


# --- BOS, format choice and MetaICL's per-example truncation --------------------------------------------------


def test_bos_starts_every_sequence_and_counts_towards_the_cap(tok):
    fmt = PromptFormat("direct", bos_id=257)
    prefix = encode_prefix(tok, [ex("ab", "x")], fmt)
    assert prefix == [257] + b("ab") + b("\nx")
    # the BOS does not make the first demonstration or a zero-shot test input "non-first"
    assert scoring_sequences(tok, [257], 0, ex("cd", "x"), fmt)[0] == ([257] + b("cd"), b("\nx"))
    context, target = training_sequence(tok, [ex("ab", "x")], ex("cd", "y"), fmt)
    assert context == [257] + b("ab") + b("\nx") + [NL2, 10] + b("cd") and target == b("\ny")
    # past the cap, tokens are dropped after the BOS, never the BOS itself; the total stays within the cap
    context, target = training_sequence(tok, [ex("g" * 250, "x"), ex("h" * 250, "y")], ex("i" * 250, "x"), fmt)
    assert context[0] == 257 and len(context) + len(target) == 512 and context[-250:] == b("i" * 250)
    # without a BOS format nothing is added (MetaICL)
    assert encode_prefix(tok, [ex("ab", "x")], PromptFormat("direct"))[0] == ord("a")


def bos_adding_tokenizer():
    """The test tokenizer with "<eos>" (257) as its BOS, prepended by its post-processor (as Gemma's tokenizer does)."""
    from tokenizers import processors

    from conftest import make_tokenizer

    tok = make_tokenizer()
    tok.bos_token = "<eos>"
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<eos> $A", special_tokens=[("<eos>", 257)])
    return tok


def test_tokenizer_bos_id_follows_what_the_tokenizer_does(tokenizer):
    from conftest import make_tokenizer

    from maml_en_llm.prompts import tokenizer_bos_id

    assert tokenizer_bos_id(tokenizer) is None  # no BOS token at all
    has_but_skips = make_tokenizer()
    has_but_skips.bos_token = "<eos>"  # a BOS token its settings never add (like SmolLM2's)
    assert has_but_skips.bos_token_id == 257 and tokenizer_bos_id(has_but_skips) is None
    adds = bos_adding_tokenizer()
    assert adds("ab")["input_ids"] == [257, 97, 98]
    assert tokenizer_bos_id(adds) == 257


def test_prompt_format_bos_choices(tokenizer):
    from maml_en_llm.errors import UserError
    from maml_en_llm.prompts import prompt_format

    adds = bos_adding_tokenizer()
    assert prompt_format(adds, "channel").bos_id == 257 and prompt_format(adds).method == "direct"
    assert prompt_format(adds, bos="no").bos_id is None and prompt_format(adds, bos="yes").bos_id == 257
    assert prompt_format(tokenizer, bos="auto").bos_id is None
    with pytest.raises(UserError, match="no BOS token"):
        prompt_format(tokenizer, bos="yes")
    assert prompt_format(adds, format="space").newlines is False and prompt_format(adds).name == "newline"
    with pytest.raises(UserError):
        prompt_format(adds, format="tabs")
    with pytest.raises(UserError):
        prompt_format(adds, bos="maybe")


def test_default_format_is_metaicls_choice():
    from maml_en_llm.prompts import default_format

    assert default_format("gpt2") == "space"
    assert default_format("gpt2", meta_trained=True) == "newline"
    assert default_format("llama") == default_format("gemma3_text") == default_format(None) == "newline"


def test_long_option_cuts_the_input_with_metaicls_negative_slice(tok):
    fmt = PromptFormat("direct")
    option = "o" * 259  # "\n" + 259 = 260 tokens: bound 254 - 260 = -6
    seqs = scoring_sequences(tok, [], 0, ex("b" * 20, "x", ("x", option)), fmt)
    assert seqs[0][0] == b("b" * 14)  # MetaICL's input_tokens[:-6], not an empty input
    assert seqs[1][1] == b("\n" + option)  # options are never cut
    # 254 - len("\n" + option) == 0: the input is emptied, as in MetaICL
    assert scoring_sequences(tok, [], 0, ex("b" * 20, "x", ("x", "o" * 253)), fmt)[0][0] == []


def test_long_outputs_are_fit_with_metaicls_rules():
    from maml_en_llm.prompts import fit_example

    ids = lambda n, v=1: [v] * n  # noqa: E731
    # the general rule: the input keeps its first 254 - len(output) tokens
    assert fit_example("t", ids(300), ids(4, 2)) == (ids(250), ids(4, 2))
    assert fit_example("t", ids(10), ids(254, 2)) == ([], ids(254, 2))
    # inst: tasks cut the output when the input is the shorter
    assert fit_example("inst:x", ids(100), ids(200, 2)) == (ids(100), ids(154, 2))
    # inst:piqa / inst:yahoo_answers_topics: 128 input and 126 output tokens
    assert fit_example("inst:piqa:y", ids(300), ids(200, 2)) == (ids(128), ids(126, 2))
    # an output of 255+ tokens, where MetaICL would stop with an assertion: its inst: rules
    assert fit_example("t", ids(10), ids(300, 2)) == (ids(10), ids(244, 2))
    assert fit_example("t", ids(400), ids(300, 2)) == (ids(128), ids(126, 2))
    for task, n_in, n_out in (("t", 10, 300), ("t", 400, 300), ("inst:a", 260, 300), ("t", 0, 255)):
        fitted_in, fitted_out = fit_example(task, ids(n_in), ids(n_out, 2))
        assert len(fitted_in) + len(fitted_out) <= 254 and fitted_out


def test_adaptation_target_is_formatted_non_first_at_k1(tokenizer):
    from maml_en_llm.adapt import adaptation_sequences

    tok = make_tokenize(tokenizer)
    fmt = PromptFormat("direct")
    (context, target), = adaptation_sequences(tok, [ex("ab", "x")], fmt)
    assert context == [NL2, 10] + b("ab") and target == b("\nx")  # as the test input after one demonstration
    assert training_sequence(tok, [], ex("ab", "x"), fmt) == (b("ab"), b("\nx"))  # multitask 0-shot stays first
