"""benchmarks/version_fingerprint.py: a fingerprint of a model under this transformers, and the comparison that
tells two versions apart."""

import json
from pathlib import Path

from conftest import load_script


def test_fingerprints_agree_with_themselves_and_a_changed_one_is_told_apart(tiny_model_dir, tmp_path, capsys):
    script = load_script(Path(__file__).parents[1] / "benchmarks" / "version_fingerprint.py")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert script.main(["--model", str(tiny_model_dir), "--json", str(a)]) == 0
    assert script.main(["--model", str(tiny_model_dir), "--json", str(b)]) == 0
    fingerprint = json.loads(a.read_text())
    assert len(fingerprint["token_ids"]) == len(script.TEXTS) and fingerprint["gradient_norm"] > 0
    assert len({len(ids) for ids in fingerprint["token_ids"]}) > 1  # the batch is padded
    capsys.readouterr()
    assert script.main(["--compare", str(a), str(b)]) == 0
    assert "same token ids" in capsys.readouterr().out

    for change in ("token_ids", "scoring_losses", "training_losses", "gradient_norm"):
        changed = json.loads(a.read_text())
        if change == "token_ids":
            changed[change][0][0] += 1
        elif change == "gradient_norm":
            changed[change] *= 1.001
        else:
            changed[change][-1] += 1e-3
        b.write_text(json.dumps(changed))
        assert script.main(["--compare", str(a), str(b)]) == 1, change
        assert change.replace("_", " ") in capsys.readouterr().out.replace("_", " ")
