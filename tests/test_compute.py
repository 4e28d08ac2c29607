import gc
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from p2pdefense.compute import MALLOC_TRIM, PeakMemory, counting_compute, proc_field_mib, release_memory
from p2pdefense.models.tiny import build_tiny_llama


def decoder_parameters(model) -> int:
    return sum(p.numel() for p in model.model.parameters())


def test_inference_counts_forward_tokens_once_per_decoder_call():
    model = build_tiny_llama(50, 16, 1, 2, 64, seed=0).eval()
    ids = torch.randint(2, 50, (3, 7))
    with counting_compute() as count, torch.no_grad():
        model(input_ids=ids)  # the causal LM wraps its decoder stack: one call counted, not two
        model(input_ids=ids[:, :4])
    assert count.forward_tokens == 3 * 7 + 3 * 4 and count.backward_tokens == 0
    assert count.flops == 2.0 * decoder_parameters(model) * (21 + 12)


def test_a_training_step_counts_its_backward_and_a_peft_wrapper_is_not_counted_twice():
    base = build_tiny_llama(50, 16, 1, 2, 64, seed=0)
    parameters = decoder_parameters(base)
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(2, 50, (2, 5))
    with counting_compute() as count:
        model(input_ids=ids, labels=ids).loss.backward()
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert count.forward_tokens == count.backward_tokens == 10
    assert count.flops == 6.0 * (parameters + lora) * 10


def test_two_models_are_weighted_by_their_size_and_nothing_is_counted_outside_the_block():
    small, large = build_tiny_llama(50, 16, 1, 2, 64, seed=0), build_tiny_llama(50, 32, 2, 2, 64, seed=0)
    ids = torch.randint(2, 50, (1, 6))
    with counting_compute() as count, torch.no_grad():
        small(input_ids=ids)
        large(input_ids=ids)
    with torch.no_grad():
        large(input_ids=ids)
    assert count.forward_tokens == 12
    assert count.flops == 2.0 * 6 * (decoder_parameters(small) + decoder_parameters(large))


def test_work_a_cache_serves_counts_as_cached_flops_whichever_run_filled_it(tmp_path):
    from p2pdefense.compute import compute_ratio
    from p2pdefense.data import synthetic_sentiment
    from p2pdefense.defenses.probe import cached_scores, cached_text_scores

    model = build_tiny_llama(50, 16, 1, 2, 64, seed=0).eval()
    ids = torch.randint(2, 50, (2, 5))

    def score(texts):
        with torch.no_grad():
            model(input_ids=ids)
        return [len(t) for t in texts]

    rows = synthetic_sentiment(3, seed=0)
    one_call = 2.0 * decoder_parameters(model) * 10
    with counting_compute() as filling:
        cached_scores(tmp_path, rows, {"k": 1}, lambda: score(["x"]))
        assert cached_text_scores(tmp_path, ["a", "bb"], {"k": 1}, score) == [1, 2]  # one call per text
    assert filling.flops == 3 * one_call and filling.cached_flops == 0
    with counting_compute() as served:
        cached_scores(tmp_path, rows, {"k": 1}, lambda: score(["x"]))
        assert cached_text_scores(tmp_path, ["bb", "ccc"], {"k": 1}, score) == [2, 3]
    assert served.flops == one_call  # only "ccc" is new
    assert served.cached_flops == 2 * one_call  # the row scores and "bb", as the filling run spent them
    metrics = {"compute": served.to_json()}
    assert compute_ratio(metrics, {"compute": {"flops": one_call}}) == pytest.approx(3.0, rel=1e-3)  # 4 digits kept


def test_a_resumed_run_has_a_flops_ratio_only_where_its_checkpoint_carried_the_count():
    from p2pdefense.compute import compute_ratio, wall_ratio

    undefended = {"compute": {"flops": 100.0}, "wall_seconds": 10.0, "resumed_from_epoch": 0}
    whole = {"compute": {"flops": 300.0, "cached_flops": 100.0}, "wall_seconds": 25.0, "resumed_from_epoch": 0}
    assert compute_ratio(whole, undefended) == 4.0 and wall_ratio(whole, undefended) == 2.5
    # the checkpoint carried the earlier epochs' FLOPs; the wall time is the last process's only: no wall ratio
    resumed = {**whole, "resumed_from_epoch": 1, "compute_partial": False}
    assert compute_ratio(resumed, undefended) == 4.0 and wall_ratio(resumed, undefended) is None
    assert compute_ratio(whole, resumed) == 1.0 and wall_ratio(whole, resumed) is None
    # a checkpoint without the count, marked or from before the mark: no ratio rather than a flattering one
    for partial in ({**resumed, "compute_partial": True}, {**whole, "resumed_from_epoch": 1}):
        assert compute_ratio(partial, undefended) is None and wall_ratio(partial, undefended) is None
        assert compute_ratio(whole, partial) is None and wall_ratio(whole, partial) is None
    assert wall_ratio({"compute": {"flops": 1.0}}, undefended) is None  # a run from before wall time was kept
    # a CPU run against the undefended run on a GPU: FLOPs compare, seconds do not
    on_gpu = {**undefended, "provenance": {"device": "cuda:0"}}
    assert wall_ratio(whole, on_gpu) is None and compute_ratio(whole, on_gpu) == 4.0
    assert wall_ratio({**whole, "provenance": {"device": "cuda:3"}}, on_gpu) == 2.5


@pytest.mark.skipif(not PeakMemory.CLEAR_REFS.exists(), reason="the peak resident set is reset through Linux's /proc")
def test_peak_memory_sees_a_freed_allocation_and_a_new_measure_starts_from_the_current_memory():
    baseline = PeakMemory()
    block = torch.ones(256, 2**20 // 4, dtype=torch.float32)  # 256 MiB, touched
    del block
    held = baseline.read()
    after = PeakMemory().read()  # made after the allocation was freed: its peak is today's resident set
    assert (held["device"] is None) == (not torch.cuda.is_available())
    assert held["host"] - after["host"] >= 200
    assert after["host"] > 0


@pytest.mark.skipif(not PeakMemory.CLEAR_REFS.exists(), reason="the peak resident set is reset through Linux's /proc")
def test_each_lap_has_its_own_peak_and_the_whole_keeps_the_highest():
    memory = PeakMemory()
    block = torch.ones(256, 2**20 // 4, dtype=torch.float32)
    del block
    allocating = memory.lap()
    quiet = memory.lap()
    assert allocating["host"] - quiet["host"] >= 200  # the second lap started after the block was freed
    assert memory.read()["host"] >= allocating["host"]


@pytest.mark.skipif(MALLOC_TRIM is None or not PeakMemory.CLEAR_REFS.exists(),
                    reason="glibc's malloc_trim and Linux's /proc")
def test_release_memory_hands_back_what_the_c_heap_kept_after_a_free():
    def resident() -> int:
        return proc_field_mib(Path("/proc/self/status"), "VmRSS")

    before = resident()
    blocks = [bytearray(64 * 1024) for _ in range(4096)]  # 256 MiB in the C heap's small chunks, touched
    kept = bytearray(b"x" * 64 * 1024)  # allocated after them: the heap's top stays in use
    del blocks
    gc.collect()
    freed = resident()
    release_memory()
    assert freed - resident() >= 200  # the heap held the freed chunks; release handed them back
    assert resident() - before < 100
    assert kept == b"x" * 64 * 1024
