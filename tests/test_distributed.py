"""torchrun sharding: 2 gloo ranks train exactly as 1 process (even and uneven shards, every method family,
LoRA when the recipe has it); collectives only ever see tensors on the communication device, in few buckets.

The device rule is checked without a GPU: a tensor subclass plus a dispatch mode make tensors that compute on
the CPU but report another device (`meta`; "the fake GPU"), and `torch.distributed` is replaced by a 2-rank
stand-in whose communication device is the fake GPU and whose `all_reduce` refuses any other tensor, as NCCL
refuses CPU tensors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from conftest import load_script, make_tiny_data
from maml_en_llm import distributed
from maml_en_llm.algorithms import TaskResult, ensure_adam_state
from maml_en_llm.cli import main
from maml_en_llm.config import INNER_OPTIMIZERS, TrainConfig
from maml_en_llm.errors import UserError
from maml_en_llm.train import meta_step

FAKE_GPU = torch.device("meta")
HAS_LORA = "lora_rank" in {f.name for f in fields(TrainConfig)}
# shared-adam with moments written by every inner step (renamed shared-adam-chain when the read-only copy
# variant, shared-adam-copy, was added)
CHAIN = "shared-adam-chain" if "shared-adam-chain" in INNER_OPTIMIZERS else "shared-adam"
COPY = "shared-adam-copy" if "shared-adam-copy" in INNER_OPTIMIZERS else None


# ---- the fake GPU: CPU storage, `meta` as the reported device (meta, unlike cuda, has a device guard in a
# CPU-only build, so indexing and copies work) ----

class FakeGpuTensor(torch.Tensor):
    """A CPU tensor in disguise: `.device` says meta, every op runs on the wrapped CPU tensor."""

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(cls, data.shape, strides=data.stride(), dtype=data.dtype,
                                                   storage_offset=data.storage_offset(), device=FAKE_GPU,
                                                   requires_grad=data.requires_grad)

    def __init__(self, data: torch.Tensor):
        self.cpu_data = data

    def __tensor_flatten__(self):
        return ["cpu_data"], None

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _fake_gpu_dispatch(func, args, kwargs or {})


def _fake_gpu_dispatch(func, args, kwargs):
    """Run an op on the CPU data; outputs are on the fake GPU when an input was or `device=meta` was asked for."""
    on_fake = any(isinstance(a, FakeGpuTensor) for a in tree_leaves((args, kwargs)))
    if kwargs.get("device") is not None:
        on_fake = torch.device(kwargs["device"]).type == "meta"
        kwargs = {**kwargs, "device": torch.device("cpu")}
    unwrap = lambda t: t.cpu_data if isinstance(t, FakeGpuTensor) else t
    out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
    if not on_fake:
        return out
    written = _written_arguments(func, args, kwargs)
    if written is not None:  # in-place and out= ops return the very tensors they wrote to
        return written
    # views wrap a CPU view of the same storage, so writes through them reach the original
    return tree_map(lambda t: FakeGpuTensor(t) if type(t) is torch.Tensor else t, out)


def _written_arguments(func, args, kwargs):
    """The argument(s) an op writes to and returns (`add_`, `copy_`, `out=`), else None."""
    schema = func._schema
    returns = [r.alias_info for r in schema.returns]
    if not returns or not all(info is not None and info.is_write for info in returns):
        return None
    bound = {arg.name: value for arg, value in zip(schema.arguments, args)} | kwargs
    by_alias = {}
    for arg in schema.arguments:
        if arg.alias_info is not None and arg.alias_info.is_write and arg.name in bound:
            by_alias[frozenset(arg.alias_info.before_set)] = bound[arg.name]
    found = [by_alias.get(frozenset(info.before_set)) for info in returns]
    if any(f is None for f in found):
        return None
    return found[0] if len(found) == 1 else tuple(found)


class FakeGpuMode(TorchDispatchMode):
    """Catches what no fake tensor takes part in: `torch.zeros(..., device="meta")`, `cpu_tensor.to("meta")`."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _fake_gpu_dispatch(func, args, kwargs or {})


@pytest.fixture()
def nccl_world(monkeypatch):
    """Rank 0 of 2 under a stand-in NCCL whose device is the fake GPU: records every all_reduce and fails on a
    tensor off that device. The other rank is taken to hold the same values as this one (SUM doubles, MAX
    keeps)."""
    calls = []

    def all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        calls.append(SimpleNamespace(device=tensor.device, dtype=tensor.dtype, numel=tensor.numel(), op=op))
        if tensor.device != FAKE_GPU:
            raise AssertionError(f"a {tensor.device} tensor reached an NCCL collective (needs {FAKE_GPU})")
        if op == dist.ReduceOp.SUM:
            tensor.mul_(2)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(distributed, "comm_device", lambda: FAKE_GPU, raising=False)
    with FakeGpuMode():
        yield calls


def fake_task(model, params, episode, pad_id):
    """Adds a known per-task gradient (task i: (i + 1) * base) and reports known statistics."""
    for name, p in params.items():
        contribution = torch.full_like(p, float(episode.index + 1)) * (1 + torch.arange(p.numel(), device=p.device)
                                                                       .view(p.shape))
        p.grad = contribution if p.grad is None else p.grad + contribution
    return TaskResult(loss=10.0 + episode.index, tokens=7, inner_loss=1.0)


def test_every_collective_gets_gpu_tensors_in_few_buckets(nccl_world):
    """meta_step under NCCL with parameters on the GPU: the CPU statistics vector and AdamW's CPU step counters
    must be moved to the GPU for their collectives, and 12 parameters need 4 calls, not 12+."""
    shapes = [(3, 4), (4,), (2, 2, 2)] * 4
    params = {f"w{i}": torch.nn.Parameter(torch.randn(shape, device=FAKE_GPU)) for i, shape in enumerate(shapes)}
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-2)
    ensure_adam_state(optimizer)
    assert all(optimizer.state[p]["step"].device.type == "cpu" for p in params.values())  # as AdamW keeps them
    episode = [SimpleNamespace(index=0), SimpleNamespace(index=1)]  # rank 0 of 2 runs task 0
    stats = meta_step(None, params, episode, fake_task, optimizer, 0, shares_moments=True, max_grad_norm=0.0)
    assert {call.device for call in nccl_world} == {FAKE_GPU}
    # grads (float32), statistics (float64), moments (float32), step counters (max)
    assert [(c.dtype, c.op) for c in nccl_world] == [
        (torch.float32, dist.ReduceOp.SUM), (torch.float64, dist.ReduceOp.SUM),
        (torch.float32, dist.ReduceOp.SUM), (torch.float32, dist.ReduceOp.MAX)]
    # both ranks contributed task 0's gradient and statistics: the average over the 2 tasks is task 0's
    expected_norm = torch.linalg.vector_norm(torch.cat([(1 + torch.arange(p.numel())).float()
                                                        for p in params.values()])).item()
    assert stats["grad_norm"] == pytest.approx(expected_norm, rel=1e-6)
    assert (stats["loss"], stats["inner_loss"], stats["tokens"]) == (10.0, 1.0, 14)
    assert all(p.device == FAKE_GPU for p in params.values())


def test_helpers_move_to_the_comm_device_and_back(nccl_world):
    on_cpu = torch.tensor([1.0, 2.0], dtype=torch.float64)
    on_gpu = torch.ones(3, device=FAKE_GPU)
    distributed.all_reduce_sum_([on_cpu, on_gpu])
    assert on_cpu.device.type == "cpu" and on_cpu.tolist() == [2.0, 4.0]
    assert on_gpu.device == FAKE_GPU and on_gpu.cpu().tolist() == [2.0, 2.0, 2.0]
    steps = torch.tensor([3.0, 5.0])
    distributed.all_reduce_max_(steps)
    assert steps.device.type == "cpu" and steps.tolist() == [3.0, 5.0]


def test_nccl_communicates_on_the_rank_gpu_and_gloo_on_the_cpu(monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed.comm_device() == torch.device("cuda", 3)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert distributed.comm_device() == torch.device("cpu")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    assert distributed.comm_device() == torch.device("cpu")


def test_buckets_group_by_dtype_in_order_and_cap_bytes():
    f32 = lambda n: torch.zeros(n, dtype=torch.float32)  # 4 bytes per element
    tensors = [f32(4), f32(4), torch.zeros(2, dtype=torch.float64), f32(4), f32(20), f32(1),
               torch.zeros(1, dtype=torch.float64)]
    assert distributed.buckets(tensors, bucket_bytes=32) == [[0, 1], [3], [4], [5], [2, 6]]
    assert distributed.buckets(tensors, bucket_bytes=1 << 20) == [[0, 1, 3, 4, 5], [2, 6]]
    assert distributed.buckets([], 32) == []


def test_one_process_never_communicates(monkeypatch):
    monkeypatch.setattr(dist, "all_reduce", lambda *a, **k: pytest.fail("a collective with one process"))
    tensor = torch.ones(3)
    distributed.all_reduce_sum_([tensor])
    distributed.all_reduce_max_(tensor)
    distributed.check_same_on_all_ranks(3, "x", "y")
    assert tensor.tolist() == [1.0, 1.0, 1.0]


def test_torchrun_with_one_fixed_gpu_is_refused(monkeypatch):
    import maml_en_llm.models as models

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(models, "pick_device", lambda device: torch.device("cuda", 1))
    with pytest.raises(UserError, match="--device cuda:1: under torchrun every rank would use that one GPU"):
        distributed.init_from_env("cuda:1")


# ---- real processes: torchrun, 2 gloo ranks ----

# adam_eps 1e-6 (not 1e-8) bounds how far Adam's ~g/|g| steps amplify rounding differences of near-zero gradient
# entries: the ranks add the tasks' contributions in another order than one process does.
SMALL = dict(steps=2, k=1, support_size=1, query_size=1, lr=1e-3, inner_lr=1e-2, adam_eps=1e-6,
             checkpoint_every=0)
LORA = dict(lora_rank=4, lora_alpha=8, lora_dropout=0.0)  # no dropout: its randomness is drawn per rank
# name -> recipe; tasks_per_step 3 puts 2 tasks on rank 0 and 1 on rank 1, tasks_per_step 1 leaves rank 1 idle
RUNS = {
    "metaicl-even": dict(method="metaicl", tasks_per_step=2),
    "metaicl-idle-rank": dict(method="metaicl", tasks_per_step=1),
    "metaicl-batched-uneven": dict(method="metaicl", tasks_per_step=3, batch_tasks=True),  # one pass per rank
    "metaicl-batched-idle-rank": dict(method="metaicl", tasks_per_step=1, batch_tasks=True),  # rank 1: no call
    "fomaml-uneven": dict(method="fomaml", inner_optimizer="sgd", tasks_per_step=3),
    "maml-uneven": dict(method="maml", inner_optimizer="sgd", tasks_per_step=3),
    "maml-idle-rank": dict(method="maml", inner_optimizer="sgd", tasks_per_step=1),
    "reptile-even": dict(method="reptile", inner_optimizer="sgd", tasks_per_step=2),
    "maml-chain-idle-rank": dict(method="maml", inner_optimizer=CHAIN, tasks_per_step=1),
    "maml-copy-uneven": dict(method="maml", inner_optimizer=COPY, tasks_per_step=3),
    "lora-metaicl-uneven": dict(method="metaicl", tasks_per_step=3, **LORA),
    "lora-fomaml-uneven": dict(method="fomaml", inner_optimizer="sgd", tasks_per_step=3, **LORA),
    "lora-maml-uneven": dict(method="maml", inner_optimizer="sgd", tasks_per_step=3, **LORA),
}


def skip_reason(name: str) -> str | None:
    if name.startswith("lora-") and not HAS_LORA:
        return "TrainConfig has no lora_rank field: LoRA meta-training is not in this version"
    if "-copy-" in name and COPY is None:
        return "no shared-adam-copy inner optimizer in this version"
    return None


def torchrun_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # the same 1-thread kernels as this process (conftest)


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory, tiny_model_dir) -> Path:
    """One `torchrun --nproc_per_node 2` of tests/dist_worker.py: the collective checks, then every run."""
    root = tmp_path_factory.mktemp("two_ranks")
    data_dir = make_tiny_data(root / "data")
    runs = {name: {**SMALL, **recipe} for name, recipe in RUNS.items() if skip_reason(name) is None}
    (root / "runs.json").write_text(json.dumps(runs))
    worker = Path(__file__).with_name("dist_worker.py")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(root), str(tiny_model_dir), str(data_dir), str(root / "runs.json")],
                          env=torchrun_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_bucketed_collectives_across_two_real_ranks(two_rank_runs):
    worker = load_script(Path(__file__).with_name("dist_worker.py"))
    expected = [(a + b).tolist() for a, b in zip(worker.rank_tensors(0), worker.rank_tensors(1))]
    for rank in (0, 1):
        got = json.loads((two_rank_runs / f"collectives-{rank}.json").read_text())
        assert got["world"] == 2 and got["buckets"] > 3  # 64-byte buckets: several calls
        assert got["summed"] == expected
        assert got["maxed"] == [1.0, 0.0, 3.0]
        assert got["mismatch"] == "the test value differs between ranks (from 0 to 1); make it equal"


def run_records(run_dir: Path) -> list[dict]:
    timing = ("seconds", "tokens_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(multi: Path, single: Path) -> None:
    """Same losses, gradient norms (the scale of the average: Adam's step would hide it) and tokens per step,
    same weights in every safetensors file, same optimizer state in the checkpoint."""
    for a, b in zip(run_records(multi), run_records(single), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-8), f"step {a['step']}: {key}"
    # Weights: the order of summation differs (rank 0 adds tasks 0 and 2, then the ranks' sums are added), and
    # Adam's steps, ~g/(|g| + eps), turn rounding in an entry whose gradient is ~0 into more than rounding.
    # 1e-5 is 1% of lr; a wrong average or a lost task moves nearly every weight by about lr.
    files = sorted(p.relative_to(single) for p in single.rglob("*.safetensors"))
    assert files and files == sorted(p.relative_to(multi) for p in multi.rglob("*.safetensors"))
    for relative in files:
        one, two = load_file(single / relative), load_file(multi / relative)
        assert one.keys() == two.keys()
        for name in one:
            torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5,
                                       msg=lambda m: f"{relative}: {name}: {m}")
    for relative in (p.relative_to(single) for p in single.rglob("optimizer.pt")):
        one, two = (torch.load(root / relative, weights_only=True)["state"] for root in (single, multi))
        assert one.keys() == two.keys()
        for index in one:  # moments: 0.1% of each tensor's scale (the gradients of step 2 inherit the above)
            for key in one[index]:
                scale = float(one[index][key].abs().max())
                torch.testing.assert_close(two[index][key], one[index][key], rtol=1e-3, atol=1e-3 * scale,
                                           msg=lambda m: f"optimizer state {index} {key}: {m}")


@pytest.mark.parametrize("name", list(RUNS))
def test_two_ranks_equal_one_process(two_rank_runs, tiny_model_dir, tmp_path, name):
    """Sharding a meta-batch over 2 ranks changes nothing: even shards, uneven ones (3 tasks on 2 ranks) and an
    idle rank (1 task). shared-adam-chain equals one process when one rank holds the whole meta-batch (1 task);
    with more tasks it averages per-rank chains, a different rule by design (docs/training.md)."""
    if skip_reason(name):
        pytest.skip(skip_reason(name))
    from maml_en_llm.config import make_config
    from maml_en_llm.train import train

    data_dir = two_rank_runs / "data"
    train(make_config(overrides={**SMALL, **RUNS[name]}), model_name=str(tiny_model_dir), data_dir=data_dir,
          split="tiny", out_dir=tmp_path / name, device="cpu", progress=False)
    assert json.loads((two_rank_runs / name / "run.json").read_text())["world_size"] == 2
    assert_same_run(two_rank_runs / name, tmp_path / name)


def test_documented_torchrun_launch_equals_one_process(tmp_path, tiny_data_dir, tiny_model_dir):
    """`torchrun ... -m maml_en_llm train ...`, exactly as the README launches it (gloo on CPU here)."""
    args = ["train", "--method", "maml", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir),
            "--split", "tiny", "--device", "cpu", "steps=2", "k=1", "tasks_per_step=3", "support_size=1",
            "query_size=1", "inner_optimizer=sgd", "lr=1e-3", "inner_lr=1e-2", "adam_eps=1e-6"]
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "maml_en_llm", *args,
                           "--out", str(tmp_path / "multi")], env=torchrun_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(tmp_path / "multi", tmp_path / "single")
