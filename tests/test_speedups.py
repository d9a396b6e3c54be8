"""GPU-grade steps, checked on the CPU: compiled and eager steps agree, SDPA and eager attention
agree, the peak-share arithmetic is right, and gpu-check without a GPU says so and exits 0."""

import functools

import pytest
import torch

from helpers.__main__ import main
from helpers.backbone import load_backbone
from helpers.checkpoints import seed_everything
from helpers.methods import parse_method, prepare
from helpers.speedups import compile_trainable, set_tf32, tf32_in_effect
from helpers.step_timing import random_batch, time_method, training_step
from helpers import timing
from helpers.timing import matmul_flops, peak_share
from helpers.tools.gpu_check import device_slug, summary_markdown

pytestmark = pytest.mark.usefixtures("one_thread")  # small operations: see conftest


def test_sdpa_and_eager_attention_agree():
    audio = torch.randn(2, 16_000)
    outputs = {}
    for attention in ("sdpa", "eager"):
        backbone = load_backbone("tiny", attention=attention).eval()
        assert backbone.config._attn_implementation == attention
        with torch.no_grad():
            outputs[attention] = backbone(audio).last_hidden_state
    torch.testing.assert_close(outputs["sdpa"], outputs["eager"], rtol=1e-4, atol=1e-5)


@pytest.fixture
def compiled_graphs(monkeypatch) -> list:
    """``torch.compile`` with the aot_eager backend, and the graphs it compiles.

    compile_trainable takes no backend, so torch.compile is patched to pass one. aot_eager
    runs what makes a compiled module train (dynamo's capture of the forward, AOTAutograd's
    joint forward and backward graph) but runs the graph's operations as they are instead of
    generating C++ kernels, which took inductor 25-50 s on 2 CPU cores (aot_eager: 7 s).
    gpu-check runs inductor on the GPU with each +compile method."""
    aot_eager = torch._dynamo.lookup_backend("aot_eager")
    graphs = []

    def backend(graph, example_inputs):
        graphs.append(graph)
        return aot_eager(graph, example_inputs)

    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **options: compile(
        model, **{**options, "backend": backend}))
    yield graphs
    torch._dynamo.reset()


@pytest.mark.parametrize("method", ["partial(2)", "cached(2)"])
def test_a_compiled_step_agrees_with_the_eager_step(method, compiled_graphs):
    """Tolerance: 1e-4 relative on the losses; on the weights after two steps, at most one AdamW
    update (1e-3) on any weight and 1e-5 on average: a compiled graph may fuse and reorder
    floating-point operations, and Adam's normalised update can turn a tiny difference in a
    near-zero gradient into a visible step for that one weight."""
    batch = random_batch(2, 1.0)
    results = {}
    for compiled in (False, True):
        prepared = prepare(parse_method(method), "random:tiny", seed=0)
        if method.startswith("cached"):
            with torch.no_grad():
                hidden = prepared.split.prefix(batch["input_values"])
            inputs = {"hidden": hidden, "frame_lengths": torch.full((2,), hidden.shape[1]),
                      "labels": batch["labels"]}
        else:
            inputs = batch
        model = compile_trainable(prepared.model.eval(), parse_method(
            method + ("+compile" if compiled else "")))  # eval: no dropout or SpecAugment
        losses = []
        step = training_step(model, inputs, "fp32", "cpu", lr=1e-3, losses=losses)
        seed_everything(0)
        step()
        step()
        results[compiled] = ([float(x) for x in losses],
                             [p.detach().clone() for p in prepared.model.parameters()
                              if p.requires_grad])
        assert bool(compiled_graphs) == compiled  # graphs went through the backend: compiled
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-4)
    for eager, compiled in zip(results[False][1], results[True][1]):
        difference = (compiled - eager).abs()
        assert difference.max() <= 1e-3 and difference.mean() <= 1e-5


def test_peak_share_arithmetic_on_a_case_worked_by_hand():
    assert matmul_flops(1000) == 2_000_000_000  # 1000^3 multiply-adds, two operations each
    # 1.5 TFLOP in 0.5 s is 3 TFLOP/s; against a 12 TFLOP/s matmul that is a quarter
    assert peak_share(1.5e12, 0.5, 12e12) == pytest.approx(0.25)


def test_the_cpu_ceiling_climbs_product_sides_until_one_is_slow(monkeypatch):
    """The best FLOP/s of 128- to 1024-sided products, stopping after the first slow one: a CPU
    that emulates bf16 is not held up for half a minute by 1024-sided products."""
    sides = []
    def timed(step, num_steps, warmup, device):
        sides.append(len(step()))
        return [{128: 1.0, 256: 0.5, 512: 10.0}[sides[-1]]] * num_steps  # 512 is slow
    monkeypatch.setattr(timing, "time_steps", timed)
    monkeypatch.setattr(timing, "SLOW_PRODUCT_SECONDS", 2.0)
    fresh = functools.lru_cache(timing._attainable_flops.__wrapped__)  # this process's ceilings
    monkeypatch.setattr(timing, "_attainable_flops", fresh)          # stay as they were
    best = timing.attainable_flops("cpu", "bf16", num_steps=3)
    assert sides == [128, 256, 512] and best == matmul_flops(256) / 0.5
    assert timing.attainable_flops("cpu", "fp32", n=128, num_steps=1) == matmul_flops(128)


@pytest.fixture
def tf32_flags():
    """Sets the two TF32 switches for a test, and puts back what they were."""
    def flags() -> tuple[bool, bool]:
        return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    def set_flags(matmul: bool, cudnn: bool) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn

    before = flags()
    yield set_flags, flags
    set_flags(*before)


@pytest.mark.parametrize("allowed", [True, False])
def test_tf32_policy_sets_matrix_products_and_convolutions_alike(tf32_flags, allowed):
    """PyTorch's defaults differ for the two (matmul off, cuDNN on): the policy sets both,
    whatever state they were in."""
    set_flags, flags = tf32_flags
    for matmul, cudnn in [(False, False), (False, True), (True, False), (True, True)]:
        set_flags(matmul, cudnn)
        set_tf32(allowed)
        assert flags() == (allowed, allowed), (matmul, cudnn)


def test_tf32_is_in_effect_only_on_cuda_with_the_option():
    tf32, plain = parse_method("full+tf32+compile"), parse_method("full+compile")
    assert tf32.tf32 and tf32.compile and tf32.name == "full+tf32+compile"
    assert tf32_in_effect(tf32, "cuda") and tf32_in_effect(tf32, "cuda:1")
    assert not tf32_in_effect(tf32, "cpu") and not tf32_in_effect(plain, "cuda")


def test_a_timed_step_records_and_applies_the_tf32_in_effect(tf32_flags):
    """The run sets the switches itself rather than inheriting them: on the CPU, +tf32 is not
    in effect, so it is recorded as False and both switches end up off; on CUDA, both on."""
    set_flags, flags = tf32_flags
    set_flags(matmul=True, cudnn=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = time_method("partial(1)+tf32", "random:tiny", device, batch_size=1,
                         clip_seconds=0.5, num_steps=1, warmup=0)
    on_cuda = device == "cuda"
    assert result.tf32 is on_cuda and flags() == (on_cuda, on_cuda)


def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_0(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    main(["gpu-check", "--results-root", str(tmp_path)])  # returns: exit status 0
    said = capsys.readouterr().out
    assert said.strip().count("\n") == 0 and "no CUDA GPU" in said
    assert list(tmp_path.iterdir()) == []


def test_gpu_check_summary_reports_savings_and_peak_share():
    rows = [{"step": "timing", "backbone": "random:wav2vec2-base", "batch_size": 32,
             "method": method, "seconds_per_step": seconds, "audio_seconds_per_second": 1.0,
             "achieved_flops_per_second": 1e14, "peak_share": 0.2, "peak_allocated_mib": 1.0}
            for method, seconds in [("full", 0.2), ("full+bf16", 0.1), ("cached(3)+bf16", 0.01)]]
    rows.append({**rows[0], "method": "lora(16)+bf16", "phase": "merged", "attention": "sdpa",
                 "weights_mib": 360.0})
    text = summary_markdown("NVIDIA H100", rows, {"timing": "ok (1 s)"})
    assert "random:wav2vec2-base, 32 x 6 s, training step" in text
    assert "| cached(3)+bf16 |" in text
    assert "32 x 6 s, merged forward pass" in text and "|             360 |" in text
    assert "0.95" in text and "0.9 " in text  # 95% less than full, 90% less than full+bf16
    assert device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_step_trains_in_bf16():
    result = time_method("partial(3)+bf16", "random:tiny", "cuda", batch_size=2,
                         clip_seconds=1.0, num_steps=2, warmup=1)
    assert result.precision == "bf16" and result.peak_allocated_mib > 0


@pytest.mark.parametrize("method", ["full", "partial(1)", "partial(2)", "cached(2)"])
def test_the_flop_model_predicts_the_counted_step_within_ten_percent(method):
    """The layer-choice explorer's cost model, against the FLOPs of a real training step."""
    from helpers.backbone import bundled_architecture
    from helpers.layer_choice import training_flops
    from helpers.step_timing import cached_batch
    from helpers.timing import count_flops

    prepared = prepare(method, "random:tiny")
    batch = random_batch(2, 2.0)
    if method.startswith("cached"):
        batch, _ = cached_batch(prepared, batch, "cpu", 2)
    counted = count_flops(training_step(prepared.model.train(), batch, "fp32", "cpu", 0.0))
    config = bundled_architecture()
    layers = parse_method(method).number or config.num_hidden_layers
    model = training_flops(config, 2, 2.0).loc[layers]
    predicted = model["cached GFLOP/step" if method.startswith("cached") else
                      "partial GFLOP/step"] * 1e9
    assert predicted == pytest.approx(counted, rel=0.10)
