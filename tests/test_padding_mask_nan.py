"""benchmarks/padding_mask_nan.py runs on CPU with a tiny model: it replays the run's steps with the plain 2D
mask and takes the next step both ways from the same state, which on a CPU gives the same finite step."""

from pathlib import Path

import pytest
import yaml
from conftest import load_script

from maml_en_llm import lm

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "padding_mask_nan.py"


@pytest.fixture(scope="module")
def script():
    return load_script(SCRIPT)


def test_replays_then_compares_both_masks_from_the_same_state(script, tiny_model_dir, tiny_data_dir, tmp_path):
    recipe = tmp_path / "config.yaml"
    recipe.write_text(yaml.safe_dump({"method": "metaicl", "steps": 10, "k": 2, "lr": 1e-3, "tasks_per_step": 3,
                                      "support_size": 1, "query_size": 1, "batch_tasks": True}))
    fixed = lm.training_mask
    report = script.main(["--config", str(recipe), "--split", "tiny", "--model", str(tiny_model_dir), "--data-dir",
                          str(tiny_data_dir), "--replay", "2", "--device", "cpu", "--dtype", "float32",
                          "--json", str(tmp_path / "out.json")])
    assert lm.training_mask is fixed
    assert [r["step"] for r in report["replayed"]] == [1, 2] and report["step"] == 3
    assert report["attention"] == "sdpa"
    plain, masked = report["plain_2d_mask"], report["training_mask"]
    assert plain["loss"] == pytest.approx(masked["loss"], abs=1e-6)
    assert plain["grad_norm"] == pytest.approx(masked["grad_norm"], rel=1e-5)
    assert (tmp_path / "out.json").exists()
