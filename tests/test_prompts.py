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
