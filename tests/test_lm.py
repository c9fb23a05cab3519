"""Batching and the per-sequence loss: left padding changes nothing, targets are found, edge cases are clear."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from maml_en_llm.lm import collate, mean_loss, sequence_losses

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
