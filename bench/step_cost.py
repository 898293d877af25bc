"""Cost of one MetaXL step against one joint-training step, measured on the same machine.

Run (from the repository root; the full run takes about 12 minutes on 2 shared CPU cores):

    .venv/bin/python bench/step_cost.py            # tiny, e5-small-sized, XLM-R-base-sized
    .venv/bin/python bench/step_cost.py --quick    # tiny only (seconds; a smoke test)
    .venv/bin/python bench/step_cost.py --configs e5-small --repeats 7 --no-memory
    .venv/bin/python bench/step_cost.py --configs e5-small --fidelity 8 \
        --out bench/results/step_cost_fidelity.json   # cached top-4 layers vs full fine-tuning
    .venv/bin/python bench/step_cost.py --configs e5-small --layers middle --variants joint \
        metaxl finite_difference layers_sequential layers_softmax per_source \
        --out bench/results/step_cost_beyond.json     # the variants beyond the paper
    bash bench/gpu_step_cost.sh                       # on a CUDA machine: fp32 and bf16, MFU

Every variant sees the same 20 examples of 48 tokens per step (NER, 7 labels; `--seq-len` and
`--batch-scale` change both for every variant alike):

- `joint`: `plain_step` on [source 10, target 10], SDPA with its fastest kernels;
- `metaxl`: `metaxl_step`, exact hypergradient, on source 10 + T1 5 + T2 5;
- `truncated`: the same with `truncated=True` (virtual step only above the RTN);
- `reference`: the original MetaXL design's passes, implemented here only so the saving is
  measured: every parameter is cloned, the virtual step and the hypergradient go through the
  clones (all of θ differentiated with create_graph, source + T1 in one second-order graph),
  Φ steps, then source (through the updated RTN) + T1 run forward/backward a second time for
  the θ update;
- beyond the paper (exact hypergradient, each on its own model built from the same weights):
  `layers_sequential` / `layers_softmax`: two RTNs, after the timed layer and the last one
  (the middle and the last when the timed layer is the last), applied in one pass or as two
  softmax-mixed source passes; `per_source`: one RTN per source (two sources), the batch
  routed through the second one.

Encoders are random-weight BERT models built from `BertConfig` (`attn_implementation="sdpa"`),
in train mode (dropout 0.1). For each config and RTN layer (0, middle, last) one model and one
AdamW (θ) / Adam (Φ) pair serve all variants; after warm-up, the variants run interleaved
(joint, metaxl, truncated, reference, joint, ...), and the table shows the median over rounds
of each round's time ratio to that round's joint step, plus the median seconds.

On CUDA (`--device cuda`, optionally `--precision bf16`: the steps run under
`torch.autocast(bfloat16)`), every step is timed up to `torch.cuda.synchronize()`, peak memory
is `torch.cuda.max_memory_allocated` over two steps of each variant in this process, and the
table adds model FLOP utilisation: MFU = F / step time / the card's peak FLOP/s, where
F = tokens x (6 x non-embedding parameters + 12 x layers x sequence length x hidden) is the
training FLOPs of the joint step's tokens (Kaplan et al.'s 6N plus attention). Every
variant is credited the same F (equal examples), so a variant's MFU falls by its overhead.
Peak FLOP/s come from `--peak-tflops` or, for known cards, from PEAK_TFLOPS (dense, no
sparsity; fp32 without TF32).

On CPU, peak memory is measured in a fresh subprocess per (config, variant) with glibc's mmap
threshold lowered (`MALLOC_MMAP_THRESHOLD_=65536`) so that freed tensors are returned to the
OS at once and the peak resident set size (`VmHWM` in /proc/self/status) follows live memory
rather than allocator caching. The subprocess builds the model and optimizers and runs
warm-up and measured steps of one variant; `peak_rss` is the whole process's peak (weights,
AdamW state, gradients, activations, the interpreter and libraries) and `step_extra` is that
peak minus the resident size after the first step (weights + optimizer state): what the step
itself needs on top of the training state.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call
from transformers import BertConfig, BertModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metaxl_core.meta import _clip_and_step, metaxl_step, plain_step, second_order_attention  # noqa: E402
from metaxl_core import frozen as frozen_lib  # noqa: E402
from metaxl_core.model import MetaXLModel, cross_entropy, split_encoder  # noqa: E402

CONFIGS = {  # layers, hidden, heads, intermediate, vocab; default repeats after warm-up
    "tiny": dict(layers=2, hidden=64, heads=2, intermediate=256, vocab=1000, repeats=21),
    "e5-small": dict(layers=12, hidden=384, heads=12, intermediate=1536, vocab=250037, repeats=3),
    "xlmr-base": dict(layers=12, hidden=768, heads=12, intermediate=3072, vocab=250002, repeats=2,
                      timed_layers="middle"),  # about a minute per round: `--layers all` for more
}
VARIANTS = ("joint", "metaxl", "truncated", "finite_difference", "reference")
BEYOND = ("layers_sequential", "layers_softmax", "per_source")  # each needs its own model
SEQ_LEN, LABELS, RTN_WIDTH = 48, 7, 192
BASE_EXAMPLES = (10, 5, 5)  # source, T1, T2 per step (times --batch-scale)
N_SOURCE, N_T1, N_T2 = BASE_EXAMPLES
VIRTUAL_LR, LR, MAX_GRAD_NORM = 1e-4, 2e-5, 1.0
PEAK_TFLOPS = {"H100": {"bf16": 989.4, "fp32": 66.9}, "H200": {"bf16": 989.4, "fp32": 66.9},
               "A100": {"bf16": 312.0, "fp32": 19.5}, "L4": {"bf16": 121.0, "fp32": 30.3}}
DEVICE, PRECISION, PEAK_TFLOPS_FLAG = torch.device("cpu"), "fp32", None  # set by main()
CPU_MEMORY_NOTE = ("fresh subprocess per (config, variant), middle RTN layer, "
                   "MALLOC_MMAP_THRESHOLD_=65536 so freed memory leaves the RSS; peak_rss = VmHWM "
                   "(peak RSS) of the whole process after 2 steps; step_extra = peak_rss minus the "
                   "RSS after the first step (weights + AdamW state)")
CUDA_MEMORY_NOTE = ("per (config, variant), middle RTN layer, from an emptied cache: "
                    "torch.cuda.max_memory_allocated over building the model and optimizers and "
                    "2 steps (weights, AdamW state, gradients, activations); reported as both "
                    "peak_rss_mib and step_extra_mib")


def build(config: str, rtn_layer: int, seed: int = 0, structure: str = "single"):
    """Model and optimizers; `structure` is "single" (one RTN) or one of BEYOND."""
    spec = CONFIGS[config]
    torch.manual_seed(seed)
    with DEVICE:  # initialise on the device: a 278M-parameter CPU init takes seconds
        encoder = BertModel(BertConfig(vocab_size=spec["vocab"], hidden_size=spec["hidden"],
                                       num_hidden_layers=spec["layers"],
                                       num_attention_heads=spec["heads"],
                                       intermediate_size=spec["intermediate"],
                                       max_position_embeddings=512, attn_implementation="sdpa"),
                            add_pooling_layer=False)
    last = spec["layers"]
    layers = rtn_layer if structure in ("single", "per_source") else \
        sorted({rtn_layer if rtn_layer != last else last // 2, last})
    model = MetaXLModel(encoder, LABELS, "ner", layers, RTN_WIDTH,
                        rtn_sets=2 if structure == "per_source" else 1,
                        rtn_mixing="softmax" if structure == "layers_softmax" else "sequential",
                        rtn_design="identity" if structure == "layers_sequential" else "official")
    model = model.to(DEVICE).train()
    theta_opt = torch.optim.AdamW(model.theta().values(), lr=LR, weight_decay=0.01)
    phi_opt = torch.optim.Adam(model.phi().values(), lr=1e-3)
    return model, theta_opt, phi_opt


def make_batch(gen: torch.Generator, n: int, vocab: int) -> dict:
    ids = torch.randint(5, vocab, (n, SEQ_LEN), generator=gen)
    mask = torch.ones(n, SEQ_LEN, dtype=torch.long)
    lengths = torch.randint(SEQ_LEN // 2, SEQ_LEN + 1, (n,), generator=gen)
    lengths[0] = SEQ_LEN  # the batch is padded to its longest row
    mask[torch.arange(SEQ_LEN) >= lengths[:, None]] = 0
    labels = torch.randint(0, LABELS, (n, SEQ_LEN), generator=gen)
    ids[mask == 0], labels[mask == 0] = 0, -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_data(config: str) -> dict:
    gen = torch.Generator().manual_seed(1)
    vocab = CONFIGS[config]["vocab"]
    batches = {"source": make_batch(gen, N_SOURCE, vocab), "target": make_batch(gen, N_T1 + N_T2, vocab),
               "t1": make_batch(gen, N_T1, vocab), "t2": make_batch(gen, N_T2, vocab)}
    return {name: {k: v.to(DEVICE) for k, v in b.items()} for name, b in batches.items()}


def reference_step(model: MetaXLModel, theta_opt, phi_opt, source: dict, t1: dict, t2: dict, *,
                   virtual_lr: float, max_grad_norm: float) -> None:
    """The original MetaXL design's passes: a cloned model for the virtual step and the
    hypergradient, then a second source + T1 pass for the real θ update. Benchmark only."""
    clones = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    theta_names, phi_names = list(model.theta()), list(model.phi())

    def loss_on(params: dict, batch: dict, use_rtn: bool = False) -> torch.Tensor:
        logits = functional_call(model, params, (batch["input_ids"], batch["attention_mask"]),
                                 {"use_rtn": use_rtn})
        return cross_entropy(logits, batch["labels"])

    with second_order_attention():
        train_loss = loss_on(clones, source, use_rtn=True) + loss_on(clones, t1)
        grads = torch.autograd.grad(train_loss, [clones[n] for n in theta_names],
                                    create_graph=True, allow_unused=True)
        fast = dict(clones)
        fast.update({n: clones[n] - virtual_lr * g for n, g in zip(theta_names, grads)
                     if g is not None})
        meta_loss = loss_on(fast, t2)
        phi_grads = torch.autograd.grad(meta_loss, [clones[n] for n in phi_names])
    del clones, grads, fast, train_loss, meta_loss
    for param, grad in zip(model.phi().values(), phi_grads):
        param.grad = grad
    phi_opt.step()
    phi_opt.zero_grad(set_to_none=True)
    loss = model.loss(source, use_rtn=True) + model.loss(t1)  # second pass, updated RTN
    loss.backward()
    for param in model.phi().values():
        param.grad = None
    _clip_and_step(model, theta_opt, max_grad_norm)


def run_variant(variant: str, model, theta_opt, phi_opt, data: dict,
                precision: str | None = None) -> None:
    """One step of `variant` in `precision` (default --precision), finished on the device when
    this returns."""
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16,
                        enabled=(precision or PRECISION) == "bf16"):
        _step(variant, model, theta_opt, phi_opt, data)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _step(variant: str, model, theta_opt, phi_opt, data: dict) -> None:
    if variant == "joint":
        plain_step(model, theta_opt, [data["source"], data["target"]], MAX_GRAD_NORM)
    elif variant in ("metaxl", "truncated", "finite_difference") + BEYOND:
        mode = variant if variant in ("truncated", "finite_difference") else "exact"
        metaxl_step(model, theta_opt, phi_opt, data["source"], data["t1"], data["t2"],
                    virtual_lr=VIRTUAL_LR, mode=mode, max_grad_norm=MAX_GRAD_NORM,
                    source_index=1 if variant == "per_source" else 0)
    elif variant == "reference":
        reference_step(model, theta_opt, phi_opt, data["source"], data["t1"], data["t2"],
                       virtual_lr=VIRTUAL_LR, max_grad_norm=MAX_GRAD_NORM)
    else:
        raise ValueError(variant)


def rtn_layers(config: str) -> list[int]:
    n = CONFIGS[config]["layers"]
    return sorted({0, n // 2, n})


def structure_of(variant: str) -> str:
    return variant if variant in BEYOND else "single"


def time_config(config: str, rtn_layer: int, variants, repeats: int, warmup: int) -> dict:
    models = {s: build(config, rtn_layer, structure=s) for s in {structure_of(v) for v in variants}}
    data = make_data(config)
    for _ in range(warmup):
        for variant in variants:
            run_variant(variant, *models[structure_of(variant)], data)
    seconds = {v: [] for v in variants}
    for _ in range(repeats):
        for variant in variants:  # interleaved: every round has each variant once
            start = time.perf_counter()
            run_variant(variant, *models[structure_of(variant)], data)
            seconds[variant].append(time.perf_counter() - start)
    result = {"rtn_layer": rtn_layer, "seconds": seconds,
              "median_s": {v: statistics.median(s) for v, s in seconds.items()}}
    if "joint" in variants:
        result["ratio_to_joint"] = {
            v: statistics.median(a / b for a, b in zip(s, seconds["joint"]))
            for v, s in seconds.items()}
    peak = peak_flops()
    if peak:
        flops = model_flops(config, models[structure_of(variants[0])][0])
        result["model_tflops_per_step"] = flops / 1e12
        result["mfu"] = {v: flops / t / peak for v, t in result["median_s"].items()}
    return result


def time_fidelity(config: str, frozen: int, repeats: int, warmup: int) -> dict:
    """The cached fidelity against full fine-tuning: joint on the full model, then joint and
    MetaXL exact (RTN at the cut and at the last layer) on the top layers over cached states,
    interleaved; plus the one-off cost of filling the cache and its size."""
    last = CONFIGS[config]["layers"]
    full, full_opt, _ = build(config, last)
    bottom, top = split_encoder(full.encoder, frozen)
    bottom.eval()
    data = make_data(config)
    with torch.no_grad():
        cached_data = {name: {**b, "input_ids": bottom(input_ids=b["input_ids"], attention_mask=b[
            "attention_mask"]).last_hidden_state} for name, b in data.items()}
    steps = {"full joint": lambda: run_variant("joint", full, full_opt, None, data)}
    for layer in sorted({frozen, last}):
        torch.manual_seed(0)
        model = MetaXLModel(copy.deepcopy(top), LABELS, "ner", layer, RTN_WIDTH,
                            frozen_layers=frozen).to(DEVICE).train()
        theta_opt = torch.optim.AdamW(model.theta().values(), lr=LR, weight_decay=0.01)
        phi_opt = torch.optim.Adam(model.phi().values(), lr=1e-3)
        if layer == last:
            steps["cached joint"] = functools.partial(run_variant, "joint", model, theta_opt,
                                                      phi_opt, cached_data, precision="fp32")
        steps[f"cached metaxl k={layer}"] = functools.partial(run_variant, "metaxl", model,
                                                              theta_opt, phi_opt, cached_data,
                                                              precision="fp32")
    if PRECISION == "bf16":  # the cached steps again under bf16 autocast, same models, same run
        for name in [n for n in steps if n.startswith("cached")]:
            steps[f"{name} bf16"] = functools.partial(steps[name].func, *steps[name].args,
                                                      precision="bf16")
    for _ in range(warmup):
        for step in steps.values():
            step()
    seconds = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(seconds[a], seconds[b]))

    sentences = [make_batch(torch.Generator().manual_seed(2), 64, CONFIGS[config]["vocab"])
                 for _ in range(2)]
    start = time.perf_counter()
    stored = [frozen_lib.compute_states(bottom, [
        {k: v[i].tolist() for k, v in b.items() if k != "labels"} for i in range(len(b["input_ids"]))],
        lambda features: {k: torch.tensor([f[k] for f in features]) for k in features[0]})
        for b in sentences]
    fill_s = time.perf_counter() - start
    tokens = sum(t.shape[0] for split in stored for t in split)
    return {"frozen_layers": frozen, "seconds": seconds,
            "median_s": {name: statistics.median(v) for name, v in seconds.items()},
            "ratio_cached_joint_to_full_joint": ratio("cached joint", "full joint"),
            "ratio_cached_metaxl_to_cached_joint": {
                name: ratio(name, "cached joint") for name in steps if "metaxl" in name},
            **({"ratio_bf16_to_fp32": {name: ratio(f"{name} bf16", name) for name in steps
                                       if name.startswith("cached") and not name.endswith("bf16")},
                "ratio_bf16_metaxl_to_bf16_joint": {
                    name: ratio(name, "cached joint bf16") for name in steps
                    if "metaxl" in name and name.endswith("bf16")}}
               if PRECISION == "bf16" else {}),
            "cache_fill_s_per_1000_sentences": fill_s / (64 * len(sentences)) * 1000,
            "cache_bytes_per_token": sum(t.numel() * t.element_size() for split in stored
                                         for t in split) / tokens,
            "cache_sentence_tokens": SEQ_LEN}


def model_flops(config: str, model: MetaXLModel) -> float:
    """Training FLOPs of the joint step's tokens: tokens x (6 N + 12 L S d), N = non-embedding
    parameters of encoder and head (the RTN is not counted)."""
    spec = CONFIGS[config]
    n = sum(p.numel() for name, p in model.theta().items() if ".embeddings." not in name)
    tokens = (N_SOURCE + N_T1 + N_T2) * SEQ_LEN
    return tokens * (6 * n + 12 * spec["layers"] * SEQ_LEN * spec["hidden"])


def peak_flops() -> float | None:
    """The device's dense peak FLOP/s for PRECISION: --peak-tflops, else a known card's (None
    on CPU or an unknown card)."""
    if PEAK_TFLOPS_FLAG:
        return PEAK_TFLOPS_FLAG * 1e12
    if DEVICE.type != "cuda":
        return None
    name = torch.cuda.get_device_name(DEVICE)
    card = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return card[PRECISION] * 1e12 if card else None


def measure_cuda_memory(config: str, rtn_layer: int, variant: str) -> dict:
    """Peak allocated CUDA memory over two steps of one variant, from an empty card."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(DEVICE)
    model, theta_opt, phi_opt = build(config, rtn_layer, structure=structure_of(variant))
    data = make_data(config)
    for _ in range(2):
        run_variant(variant, model, theta_opt, phi_opt, data)
    peak = torch.cuda.max_memory_allocated(DEVICE) / 2**20
    del model, theta_opt, phi_opt, data
    return {"peak_rss_mib": peak, "step_extra_mib": peak}  # same keys as the CPU measurement


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _peak_rss_kib() -> int:
    """VmHWM, this process's own peak RSS. (ru_maxrss would not do: Linux carries the parent's
    peak across fork + exec, and the parent holds the timing models.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_child(config: str, rtn_layer: int, variant: str, steps: int) -> None:
    model, theta_opt, phi_opt = build(config, rtn_layer, structure=structure_of(variant))
    data = make_data(config)
    before_step = _rss_kib()
    run_variant(variant, model, theta_opt, phi_opt, data)
    steady = _rss_kib()  # weights + optimizer state, nothing of the step alive
    for _ in range(steps - 1):
        run_variant(variant, model, theta_opt, phi_opt, data)
    peak = _peak_rss_kib()
    print(json.dumps({"peak_rss_mib": peak / 1024, "steady_rss_mib": steady / 1024,
                      "before_first_step_rss_mib": before_step / 1024,
                      "step_extra_mib": (peak - steady) / 1024}))


def measure_memory(config: str, rtn_layer: int, variant: str, threads: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--memory-child", config, str(rtn_layer), variant,
           "--threads", str(threads), "--seq-len", str(SEQ_LEN),
           "--batch-scale", str(N_SOURCE // BASE_EXAMPLES[0])]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def machine(threads: int) -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads,
            "device": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu",
            "precision": PRECISION, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def main(argv=None) -> None:
    global DEVICE, PRECISION, PEAK_TFLOPS_FLAG, SEQ_LEN, N_SOURCE, N_T1, N_T2
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny config only")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS))
    parser.add_argument("--layers", choices=["all", "middle"],
                        help="RTN layers to time: 0, middle, last (all) or the middle one "
                             "(default: all, middle only for xlmr-base)")
    parser.add_argument("--repeats", type=int, help="timed rounds per config (default: per config)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS + BEYOND, default=list(VARIANTS))
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine, 2-thread OpenMP "
                             "timings swung by several x between rounds)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: steps under torch.autocast(bfloat16); with --fidelity, the "
                        "cached steps run in both fp32 and bf16, interleaved in one run")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's peak TFLOP/s for MFU (default: known cards only)")
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN, help="tokens per sequence")
    parser.add_argument("--batch-scale", type=int, default=1,
                        help=f"examples per step times this (default 1: source {N_SOURCE}, "
                             f"T1 {N_T1}, T2 {N_T2}; a GPU wants larger steps)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "step_cost.json")
    parser.add_argument("--fidelity", type=int, metavar="K",
                        help="instead: the cached fidelity with layers 1..K frozen against full "
                             "fine-tuning (joint), and MetaXL against joint at that fidelity")
    parser.add_argument("--memory-child", nargs=3, metavar=("CONFIG", "LAYER", "VARIANT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    DEVICE, PRECISION, PEAK_TFLOPS_FLAG = torch.device(args.device), args.precision, args.peak_tflops
    if args.seq_len < 2 or args.batch_scale < 1:
        parser.error("--seq-len must be >= 2 and --batch-scale >= 1")
    SEQ_LEN = args.seq_len
    N_SOURCE, N_T1, N_T2 = (n * args.batch_scale for n in BASE_EXAMPLES)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    torch.set_num_threads(args.threads)
    if args.memory_child:
        config, layer, variant = args.memory_child
        memory_child(config, int(layer), variant, steps=2)
        return

    configs = ["tiny"] if args.quick else (args.configs or list(CONFIGS))
    if args.fidelity is not None:
        fidelity_report(configs, args)
        return
    report = {"machine": machine(args.threads),
              "setup": {"seq_len": SEQ_LEN, "examples_per_step": {
                  "joint": f"source {N_SOURCE} + target {N_T1 + N_T2}",
                  "metaxl/truncated/reference": f"source {N_SOURCE} + T1 {N_T1} + T2 {N_T2}"},
                  "rtn_width": RTN_WIDTH, "warmup_rounds": args.warmup,
                  "timing": "interleaved rounds (joint, metaxl, truncated, reference); "
                            "ratio_to_joint is the median over rounds of each round's ratio",
                  "memory": CUDA_MEMORY_NOTE if DEVICE.type == "cuda" else CPU_MEMORY_NOTE},
              "configs": {}}
    for config in configs:
        spec = CONFIGS[config]
        repeats = args.repeats or spec["repeats"]
        which = args.layers or spec.get("timed_layers", "all")
        layers = rtn_layers(config) if which == "all" else [spec["layers"] // 2]
        entry = {"spec": spec | {"repeats": repeats}, "timing": [], "memory": {}}
        for layer in layers:
            result = time_config(config, layer, args.variants, repeats, args.warmup)
            entry["timing"].append(result)
            _print_timing(config, result)
        if not args.no_memory and (config != "tiny" or args.quick):
            layer = spec["layers"] // 2
            for variant in args.variants:
                entry["memory"][variant] = (
                    measure_cuda_memory(config, layer, variant) if DEVICE.type == "cuda"
                    else measure_memory(config, layer, variant, args.threads))
            if "joint" in entry["memory"]:
                joint = entry["memory"]["joint"]
                for m in entry["memory"].values():
                    m["peak_ratio_to_joint"] = m["peak_rss_mib"] / joint["peak_rss_mib"]
                    m["step_extra_ratio_to_joint"] = m["step_extra_mib"] / joint["step_extra_mib"]
            entry["memory_rtn_layer"] = layer
            _print_memory(config, entry["memory"])
        report["configs"][config] = entry
    report["targets"] = _targets(report["configs"])
    print(json.dumps(report["targets"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


def fidelity_report(configs: list[str], args) -> None:
    report = {"machine": machine(args.threads), "seq_len": SEQ_LEN,
              "examples_per_step": {"joint": f"source {N_SOURCE} + target {N_T1 + N_T2}",
                                    "metaxl": f"source {N_SOURCE} + T1 {N_T1} + T2 {N_T2}"},
              "timing": "interleaved rounds; ratios are medians over rounds of each round's ratio",
              "configs": {}}
    for config in configs:
        frozen = min(args.fidelity, CONFIGS[config]["layers"])
        result = time_fidelity(config, frozen, args.repeats or CONFIGS[config]["repeats"],
                               args.warmup)
        result["targets"] = {
            "cached joint <= 0.4x full joint": result["ratio_cached_joint_to_full_joint"] <= 0.4,
            "cached metaxl exact <= 1.3x cached joint": all(
                r <= 1.3 for r in result["ratio_cached_metaxl_to_cached_joint"].values())}
        report["configs"][config] = result
        cells = "  ".join(f"{n} {t:.3f}s" for n, t in result["median_s"].items())
        print(f"{config:10s} frozen 1..{frozen}: {cells}")
        print(f"{'':10s} cached joint / full joint {result['ratio_cached_joint_to_full_joint']:.2f}x; "
              + "; ".join(f"{n} / cached joint {r:.2f}x"
                          for n, r in result["ratio_cached_metaxl_to_cached_joint"].items())
              + "".join(f"; {n} bf16 / fp32 {r:.2f}x"
                        for n, r in result.get("ratio_bf16_to_fp32", {}).items())
              + f"; cache fill {result['cache_fill_s_per_1000_sentences']:.1f} s per 1000 sentences "
              f"of {SEQ_LEN} tokens, {result['cache_bytes_per_token']:.0f} bytes per token", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


def _targets(configs: dict) -> dict:
    """The issue's targets, checked on every (config, layer) timed and on the memory runs."""
    out = {}
    for config, entry in configs.items():
        if config == "tiny":  # dispatch-overhead bound (ms per step): no target there
            continue
        rows = [t["ratio_to_joint"] for t in entry["timing"] if "ratio_to_joint" in t]
        if rows and "metaxl" in rows[0]:
            out[f"{config}: exact <= 1.8x joint"] = max(r["metaxl"] for r in rows) <= 1.8
        if rows and "truncated" in rows[0]:
            out[f"{config}: truncated <= 1.3x joint"] = max(r["truncated"] for r in rows) <= 1.3
        if rows and {"reference", "metaxl"} <= set(rows[0]):
            out[f"{config}: reference slower than exact"] = all(
                r["reference"] > r["metaxl"] for r in rows)
        memory = entry["memory"]
        if config == "xlmr-base" and "peak_ratio_to_joint" in memory.get("metaxl", {}):
            out[f"{config}: exact peak memory <= 1.6x joint"] = (
                memory["metaxl"]["peak_ratio_to_joint"] <= 1.6)
    return out


def _print_timing(config: str, result: dict) -> None:
    ratios, mfu = result.get("ratio_to_joint", {}), result.get("mfu", {})
    cells = "  ".join(f"{v} {result['median_s'][v]:7.3f}s" + (f" ({ratios[v]:.2f}x)" if v in ratios else "")
                      + (f" MFU {mfu[v]:.1%}" if v in mfu else "") for v in result["median_s"])
    print(f"{config:10s} k={result['rtn_layer']:2d}  {cells}", flush=True)


def _print_memory(config: str, memory: dict) -> None:
    cells = "  ".join(f"{v} {m['peak_rss_mib']:7.0f} MiB" + (f" ({m['peak_ratio_to_joint']:.2f}x)"
                      if "peak_ratio_to_joint" in m else "") for v, m in memory.items())
    print(f"{config:10s} peak  {cells}", flush=True)


if __name__ == "__main__":
    main()
