"""Batching and the per-sequence loss: left padding changes nothing, targets are found, edge cases are clear."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from maml_en_llm import lm
from maml_en_llm.lm import collate, mean_loss, sequence_losses, training_mask

PAD = 258


@pytest.fixture(scope="module")
def model(tiny_model_dir, device):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval().to(device)


def brute_force(model, context, target):
    with torch.no_grad():
        logits = model(torch.tensor([context + target], device=model.device)).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    return -sum(logp[len(context) + j - 1, t].item() for j, t in enumerate(target)) / len(target)


def test_collate_left_pads_and_marks_targets():
    batch = collate([([1, 2, 3], [4]), ([5], [6, 7])], PAD)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4], [PAD, 5, 6, 7]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    assert batch.target_mask.tolist() == [[False, True], [True, True]]
    assert batch.num_tokens == 7


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_padded_batch_equals_each_sequence_alone(tiny_model_dir, attn, device):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn).eval().to(device)
    sequences = [([1, 2, 3, 4, 5], [6, 7]), ([9], [10, 11, 12]), ([3] * 20, [4])]
    with torch.no_grad():
        batched = sequence_losses(model, collate(sequences, PAD).to(device))
    for row, (context, target) in enumerate(sequences):
        assert batched[row].item() == pytest.approx(brute_force(model, context, target), abs=1e-5)


def test_mean_loss_is_mean_of_sequence_means(model):
    sequences = [([1, 2], [3]), ([4], [5, 6, 7])]
    with torch.no_grad():
        per = sequence_losses(model, collate(sequences, PAD).to(model.device))
        assert mean_loss(model, collate(sequences, PAD).to(model.device)).item() == pytest.approx(per.mean().item())


def test_empty_context_scores_from_the_second_target_token(model):
    with torch.no_grad():
        loss = sequence_losses(model, collate([([], [5, 6, 7])], PAD).to(model.device))[0].item()
    assert loss == pytest.approx(brute_force(model, [5], [6, 7]), abs=1e-5)
    with pytest.raises(ValueError, match="no target tokens"):
        collate([([], [5])], PAD)
    with pytest.raises(ValueError, match="no target tokens"):
        collate([([1], [])], PAD)


def test_training_mask_is_causal_over_real_keys_and_leaves_no_query_row_empty():
    batch = collate([([1, 2, 3], [4]), ([5], [6, 7]), ([8], [9])], PAD)  # widths 4, 3, 2: one and two pad slots
    mask = training_mask(batch.attention_mask)
    assert mask.shape == (3, 1, 4, 4) and mask.dtype == torch.bool
    real = batch.attention_mask.bool()
    for row in range(3):
        for q in range(4):
            expected = [bool(real[row, key]) and key <= q for key in range(4)] if real[row, q] else \
                [key == q for key in range(4)]  # a pad position sees itself only
            assert mask[row, 0, q].tolist() == expected, (row, q)
    assert mask.any(-1).all()  # what CUDA's memory-efficient SDPA backward needs (no NaN rows)


def losses_and_grads(model, batch):
    """The batch's per-sequence losses and the gradient of their sum, with gradients on (the training masks)."""
    model.zero_grad()
    losses = sequence_losses(model, batch)
    losses.sum().backward()
    return losses.detach(), [p.grad.clone() for p in model.parameters()]


def _checked_sdpa(seen):
    """transformers' SDPA attention, recording the mask it receives."""
    from transformers.modeling_utils import AttentionInterface

    original = AttentionInterface._global_mapping["sdpa"]

    def wrapper(module, query, key, value, attention_mask, *args, **kwargs):
        seen.append(None if attention_mask is None else attention_mask.detach().clone())
        return original(module, query, key, value, attention_mask, *args, **kwargs)
    return wrapper


def test_under_gradients_sdpa_sees_no_fully_masked_row_and_nothing_else_changes(tiny_model_dir, device, monkeypatch):
    from transformers.modeling_utils import AttentionInterface

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").to(device)
    batch = collate([([1, 2, 3, 4, 5, 6], [7, 8]), ([9], [10, 11, 12]), ([3] * 4, [4])], PAD).to(device)

    seen = []
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", _checked_sdpa(seen))
    losses, grads = losses_and_grads(model, batch)
    assert seen and all(mask is not None and mask.any(-1).all() for mask in seen)
    with torch.no_grad():  # scoring keeps transformers' own mask from the 2D one: its pad rows are empty
        seen.clear()
        scored = sequence_losses(model, batch)
    assert seen and not all(mask.any(-1).all() for mask in seen)
    assert torch.allclose(scored, losses, atol=1e-6)

    monkeypatch.setattr(lm, "training_mask", lambda mask: mask)  # the plain 2D mask, as before
    plain_losses, plain_grads = losses_and_grads(model, batch)
    assert torch.allclose(losses, plain_losses, atol=1e-6)
    for got, want in zip(grads, plain_grads):
        assert torch.allclose(got, want, atol=1e-6)


def test_eager_attention_and_unpadded_batches_keep_the_2d_mask(tiny_model_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(lm, "training_mask", lambda mask: calls.append(mask) or mask)
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    sequence_losses(eager, collate([([1, 2], [3]), ([4], [5])], PAD)).sum().backward()
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    sequence_losses(sdpa, collate([([1, 2], [3]), ([4, 5], [6])], PAD)).sum().backward()  # no padding
    assert calls == []
    sequence_losses(sdpa, collate([([1, 2], [3]), ([4], [5])], PAD)).sum().backward()
    assert len(calls) == 1


def test_a_window_model_without_masks_per_layer_type_keeps_the_2d_mask_past_its_window(tiny_model_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(lm, "training_mask", lambda mask: calls.append(mask) or mask)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    model.config.sliding_window = 3
    sequence_losses(model, collate([([1, 2, 3], [4]), ([5], [6])], PAD)).sum().backward()  # width 4 > 3
    assert calls == []
    sequence_losses(model, collate([([1, 2], [3]), ([5], [6])], PAD)).sum().backward()  # width 3
    assert len(calls) == 1


@pytest.fixture(scope="module")
def tiny_gemma3():
    """A random two-layer Gemma 3: one sliding-window layer (window 3) and one full-attention layer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=3,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=64)
    return Gemma3ForCausalLM._from_config(config, attn_implementation="sdpa")


def test_training_mask_with_a_window_sees_only_keys_within_it():
    batch = collate([([1, 2, 3, 4], [5]), ([6], [7, 8])], PAD)  # width 5; the second row has two pad slots
    mask = training_mask(batch.attention_mask, window=2)
    real = batch.attention_mask.bool()
    for row in range(2):
        for q in range(5):
            expected = [bool(real[row, key]) and 0 <= q - key < 2 for key in range(5)] if real[row, q] else \
                [key == q for key in range(5)]
            assert mask[row, 0, q].tolist() == expected, (row, q)


def test_a_model_with_sliding_layers_gets_one_mask_per_layer_type_matching_transformers(tiny_gemma3, monkeypatch):
    from transformers.modeling_utils import AttentionInterface

    model = tiny_gemma3
    batch = collate([([1, 2, 3, 4, 5, 6], [7, 8]), ([9], [10, 11, 12]), ([3] * 4, [4])], PAD)  # width 8 > 3
    real_queries = batch.attention_mask.bool()[:, None, :, None]

    seen = []
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", _checked_sdpa(seen))
    with torch.no_grad():  # transformers builds its own masks from the 2D one: window on layer 0, none on layer 1
        scored = sequence_losses(model, batch)
    theirs, seen[:] = list(seen), []
    losses, grads = losses_and_grads(model, batch)
    ours = list(seen)
    assert len(ours) == len(theirs) == 2
    assert not theirs[0].equal(theirs[1])  # the window is there (so the comparison below sees it)
    for got, want in zip(ours, theirs):
        got = got.expand_as(want)
        assert got.any(-1).all()  # no fully masked query row under gradients
        assert torch.equal(got & real_queries, want & real_queries)  # real tokens see exactly transformers' keys
    assert torch.allclose(scored, losses, atol=1e-6)

    monkeypatch.setattr(lm, "_model_takes_masks_per_layer_type", lambda model: False)  # keep the plain 2D mask
    seen.clear()
    plain_losses, plain_grads = losses_and_grads(model, batch)
    assert not all(mask.any(-1).all() for mask in seen)  # that path does leave empty rows
    assert torch.allclose(losses, plain_losses, atol=1e-6)
    for got, want in zip(grads, plain_grads):
        assert torch.allclose(got, want, atol=1e-6)


def test_the_model_is_searched_for_the_mask_dict_once_not_on_every_forward(tiny_gemma3, monkeypatch):
    model = tiny_gemma3
    batch = collate([([1, 2, 3, 4, 5, 6], [7, 8]), ([9], [10, 11, 12])], PAD)  # wider than the window of 3
    looked_at = []
    real = lm._takes_masks_per_layer_type
    monkeypatch.setattr(lm, "_takes_masks_per_layer_type", lambda cls: looked_at.append(cls) or real(cls))
    lm._MODELS_TAKING_MASKS_PER_LAYER_TYPE.pop(model, None)
    sequence_losses(model, batch).sum().backward()
    first = len(looked_at)
    sequence_losses(model, batch).sum().backward()
    assert first >= 1 and len(looked_at) == first
    assert lm._MODELS_TAKING_MASKS_PER_LAYER_TYPE[model] is True
