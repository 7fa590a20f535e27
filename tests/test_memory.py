"""Peak memory per phase (avs_mamba.memory) and in a training run: CPU high-water mark and sampler, the CUDA
allocator path with faked torch.cuda counters, a tiny run's figures in metrics.json, MLflow and a resumed run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from _engine_helpers import make_data, write_config

from avs_mamba import memory
from avs_mamba.checkpointing import load_checkpoint
from avs_mamba.config import load_config
from avs_mamba.engine import train
from avs_mamba.memory import CUDA_METHOD, MB, PeakMemory, model_tensors, tensor_bytes

BIG, SMALL, HELD = 96, 24, 16  # MiB


def _touched(mib: int) -> torch.Tensor:
    """A float32 tensor of ``mib`` MiB whose pages are all written (resident)."""
    return torch.ones(mib * MB // 4)


def _wait_for_sample(tracker: PeakMemory, at_least: int) -> None:
    """Let the sampler thread see the allocation (a condition, not a time limit: the thread may be descheduled)."""
    deadline = time.monotonic() + 60
    while tracker.sampler is not None and tracker.sampler.peak < at_least and time.monotonic() < deadline:
        time.sleep(memory.SAMPLE_INTERVAL_S)


@pytest.mark.parametrize("sampled", [False, True], ids=["high-water-mark", "sampler"])
def test_cpu_phases_measure_their_own_peak(sampled: bool) -> None:
    """Each phase reads its own peak: a smaller phase after a bigger one is not hidden by the earlier peak (the
    ru_maxrss pitfall), held tensors are added once, and repeats of a phase keep their maximum."""
    if not sampled and not memory._can_reset_hwm():
        pytest.skip("this kernel refuses to reset VmHWM via /proc/self/clear_refs (the sampler case covers it)")
    tracker = PeakMemory("cpu", sampler=sampled)
    assert tracker.method.startswith("cpu: peak RSS growth") and ("sampled" in tracker.method) == sampled

    def allocate(mib: int) -> None:
        x = _touched(mib)
        if sampled:
            _wait_for_sample(tracker, tracker.sampler.start_rss + (mib - 2) * MB)
        del x

    with tracker.phase("train"):
        allocate(BIG)
    with tracker.phase("infer"):
        allocate(SMALL)
    held = _touched(HELD)
    with tracker.phase("infer", held=lambda: [held, held[:1024], held.view(-1, 2)]):  # one storage
        allocate(SMALL)
    # RSS growth can fall short of a tensor's size by the free pages the allocator reuses: 2 MiB of slack, the
    # sampler's wait condition.
    assert BIG - 2 <= tracker.peaks["train"] <= BIG + 12
    assert SMALL + HELD - 2 <= tracker.peaks["infer"] <= SMALL + HELD + 12
    assert tracker.record() == {
        "peak_mem_train_mb": tracker.peaks["train"],
        "peak_mem_train_reserved_mb": None,
        "peak_mem_infer_mb": tracker.peaks["infer"],
        "peak_mem_infer_reserved_mb": None,
    }


def test_a_phase_that_raises_records_nothing() -> None:
    tracker = PeakMemory("cpu", sampler=True)
    with pytest.raises(RuntimeError, match="boom"), tracker.phase("train"):
        raise RuntimeError("boom")
    assert tracker.peaks == {} and tracker.sampler is None


class FakeAllocator:
    """Stands in for the CUDA caching allocator's counters: allocated/reserved now, and their peaks since reset."""

    def __init__(self) -> None:
        self.allocated = self.reserved = self.peak_allocated = self.peak_reserved = 0
        self.calls: list[str] = []

    def alloc(self, nbytes: int, cached: int = 0) -> None:
        self.allocated += nbytes
        self.reserved = max(self.reserved, self.allocated + cached)
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def free(self, nbytes: int) -> None:
        self.allocated -= nbytes  # the block stays cached: reserved does not drop

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def log(name, result=None):  # noqa: ANN001, ANN202
            def fn(device=None):  # noqa: ANN001, ANN202
                assert device in (None, torch.device("cuda:1")), f"{name} got device {device!r}"
                self.calls.append(name)
                return result() if callable(result) else None

            return fn

        def empty_cache() -> None:
            self.calls.append("empty_cache")
            self.reserved = self.allocated

        def reset() -> None:
            self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

        monkeypatch.setattr(torch.cuda, "synchronize", log("synchronize"))
        monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", log("reset", lambda: reset()))
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", log("max_allocated", lambda: self.peak_allocated))
        monkeypatch.setattr(torch.cuda, "max_memory_reserved", log("max_reserved", lambda: self.peak_reserved))


def test_cuda_path_reads_the_allocator_per_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    """The allocator's peaks are reset at each phase's start (after emptying the cache) and read after a sync; a
    phase after a bigger one reports its own peak; repeats keep the maximum; no RSS is read."""
    fake = FakeAllocator()
    fake.install(monkeypatch)
    monkeypatch.setattr(memory, "_rss_reader", lambda: pytest.fail("the CUDA path must not read the RSS"))
    tracker = PeakMemory(torch.device("cuda:1"))
    assert tracker.method == CUDA_METHOD
    fake.alloc(100 * MB)  # the model and optimizer state, alive across phases
    with tracker.phase("train", held=lambda: pytest.fail("held tensors are a CPU-only correction")):
        assert fake.calls == ["synchronize", "empty_cache", "reset"], "reset before the body runs"
        fake.alloc(400 * MB, cached=50 * MB)
        fake.free(400 * MB)
    assert fake.calls[-3:] == ["synchronize", "max_allocated", "max_reserved"]
    with tracker.phase("infer"):
        fake.alloc(30 * MB)
        fake.free(30 * MB)
    with tracker.phase("infer"):
        fake.alloc(20 * MB)
        fake.free(20 * MB)
    assert tracker.record() == {
        "peak_mem_train_mb": 500.0,
        "peak_mem_train_reserved_mb": 550.0,
        "peak_mem_infer_mb": 130.0,  # not 500: the peak was reset; the max of the two repeats
        "peak_mem_infer_reserved_mb": 130.0,  # the train phase's cache was emptied first
    }


def test_merge_keeps_the_maximum_of_segments() -> None:
    tracker = PeakMemory("cpu")
    tracker.peaks, tracker.reserved = {"train": 10.0}, {}
    tracker.merge({"peak_mem_train_mb": 12.0, "peak_mem_infer_mb": 3.0, "peak_mem_train_reserved_mb": None})
    tracker.merge(None)
    assert tracker.record()["peak_mem_train_mb"] == 12.0 and tracker.record()["peak_mem_infer_mb"] == 3.0


def test_held_tensors_count_each_storage_once() -> None:
    model = torch.nn.Linear(10, 4)  # 44 float32 parameters
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 10)).sum().backward()
    optimizer.step()  # two moments per parameter + a step counter per parameter tensor
    x = torch.zeros(5)
    counted = tensor_bytes(model_tensors(model, optimizer, inputs=[x, x[1:]]))
    assert counted == 44 * 4 * 4 + 2 * 4 + 5 * 4  # weights, grads, exp_avg, exp_avg_sq; two float32 steps; x


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="cpu or cuda devices, not 'meta'"):
        PeakMemory("meta")


# ---- a training run ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"), counts=(4, 2, 2))


def _tiny(tmp_path: Path, data_root: Path, device: str = "cpu"):  # noqa: ANN202
    """A tiny run whose training and evaluation batches are equal (2 clips), so the training peak must be higher."""
    return load_config(
        write_config(
            tmp_path / "tiny.yaml",
            data_root,
            model={"name": "tiny_seg", "width": 32},
            train={"epochs": 2, "batch_size": 2, "device": device},
            eval={"batch_size": 2},
        )
    )


def test_tiny_run_records_both_peaks(tmp_path: Path, data_root: Path) -> None:
    """metrics.json and MLflow carry positive, plausible peaks under the profiler's names; resume keeps them."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = _tiny(tmp_path, data_root)
    record = train(config, tmp_path / "run", tracking=True, tracking_uri=uri, progress=False)
    cost = json.loads((tmp_path / "run" / "metrics.json").read_text())["cost"]
    assert cost == record["cost"]
    params_mb = cost["params_total"] * 4 / MB
    train_mb, infer_mb = cost["peak_mem_train_mb"], cost["peak_mem_infer_mb"]
    assert infer_mb > params_mb, "at least the weights"
    assert train_mb >= 4 * params_mb, "weights, gradients and AdamW's two moments"
    assert train_mb >= infer_mb, "the same batch: training holds activations for backward, gradients, moments"
    assert train_mb < 1024, "a 32 px tiny model"
    assert cost["measured"] == ["params", "flops", "memory", "latency"] and cost["error"] is None
    assert (
        cost["memory_method"].startswith("cpu: peak RSS growth")
        and "run: train = its training steps" in cost["memory_method"]
    )
    assert cost["peak_mem_train_reserved_mb"] is None, "reserved memory is a CUDA figure"

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("avs-bench-smoke").experiment_id])
    assert run.data.metrics["cost/peak_mem_train_mb"] == pytest.approx(train_mb)
    assert run.data.metrics["cost/peak_mem_infer_mb"] == pytest.approx(infer_mb)

    # The checkpoint carries the peaks; a run resumed after its last epoch trains no more and keeps them.
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["memory"]
    assert saved["peak_mem_train_mb"] == train_mb
    (tmp_path / "run" / "metrics.json").unlink()
    resumed = train(config, tmp_path / "run", tracking=False, progress=False)
    assert resumed["cost"]["peak_mem_train_mb"] == train_mb
    assert resumed["cost"]["peak_mem_infer_mb"] >= saved["peak_mem_infer_mb"]


def test_memory_is_a_cost_measure_that_can_be_left_out(tmp_path: Path, data_root: Path) -> None:
    record = train(_tiny(tmp_path, data_root), tmp_path / "run", tracking=False, progress=False, cost=("params",))
    cost = record["cost"]
    assert cost["measured"] == ["params"] and cost["peak_mem_train_mb"] is None and cost["memory_method"] is None
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["memory"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (test_cuda_path_* covers it with fakes)")
def test_tiny_run_on_cuda_uses_the_allocator(tmp_path: Path, data_root: Path) -> None:
    record = train(_tiny(tmp_path, data_root, device="cuda"), tmp_path / "run", tracking=False, progress=False)
    cost = record["cost"]
    assert cost["memory_method"].startswith("cuda: torch.cuda.max_memory_allocated")
    params_mb = cost["params_total"] * 4 / MB
    assert cost["peak_mem_train_mb"] >= max(cost["peak_mem_infer_mb"], 4 * params_mb)
    assert cost["peak_mem_infer_mb"] > params_mb
    for phase in ("train", "infer"):
        assert cost[f"peak_mem_{phase}_reserved_mb"] >= cost[f"peak_mem_{phase}_mb"]
