"""How far apart are source and target token representations at the RTN site, before and after
the RTN, at initialisation and after MetaXL training? An analysis for results/README.md.

    python bench/rep_distance.py --preset bench/presets/cpu.yaml \\
        --run 'ner|ner:masakhaner2:lug|ner:conll2003:en|metaxl|1|' --out results/rep_distance.json

Trains the preset's run (the same TrialConfig as the benchmark, via run_trial) and keeps the
model's weights at initialisation and after the last epoch. For each, it encodes the source
training sentences and the target dev sentences (never test), takes the hidden states at the
RTN site (the output of layer k, the RTN's input) at the word-initial sub-tokens (the labelled
positions), and applies the RTN to the source ones (the target never passes through it).
Measure: the maximum mean discrepancy (MMD, Gretton et al. 2012) between the source and the
target token sets, with
  - a linear kernel: MMD = ||mean(source) - mean(target)||_2 (the distance of the means), also
    shown relative to the mean token norm;
  - a Gaussian kernel, MMD^2 (unbiased), bandwidth = the median pairwise distance of the pooled
    pre-RTN tokens of that checkpoint (the same bandwidth before and after the RTN).
Smaller = closer. Also prints the relative size of the RTN's change ||RTN(h) - h|| / ||h||
(0 = identity).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from metaxl_core import train as train_lib  # noqa: E402
import transfer  # noqa: E402

MAX_TOKENS = 2000  # per set, for the Gaussian MMD (pairwise kernels)


@torch.no_grad()
def site_tokens(model, encoded, collator) -> torch.Tensor:
    """Hidden states at the RTN site (RTN input), word-initial tokens only: (n, d)."""
    captured = []
    hook = model.rtn_site().register_forward_hook(
        lambda module, inputs, output: captured.append(output[0] if isinstance(output, tuple)
                                                       else output))
    model.eval()
    rows = []
    try:
        for batch in train_lib._loader(encoded.features, collator, 64, 0, shuffle=False):
            captured.clear()
            model(batch["input_ids"], batch["attention_mask"])
            rows.append(captured[0][batch["labels"] != -100])
    finally:
        hook.remove()
    return torch.cat(rows).double()


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, sigma: float) -> float:
    """Unbiased MMD^2 with the Gaussian kernel exp(-||a-b||^2 / (2 sigma^2))."""
    def k(a, b):
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * sigma ** 2))
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())


def subsample(x: torch.Tensor, n: int) -> torch.Tensor:
    if len(x) <= n:
        return x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]]


def measure(model, splits, collator) -> dict:
    source = site_tokens(model, splits["source_train"], collator)
    target = site_tokens(model, splits["target_dev"], collator)
    rtn = model.rtn[str(model.rtn_layer)].double()
    with torch.no_grad():
        moved = rtn(source.unsqueeze(0)).squeeze(0)
    rtn.float()
    xs, xt, xm = (subsample(v, MAX_TOKENS) for v in (source, target, moved))
    sigma = float(torch.cdist(torch.cat([xs, xt]), torch.cat([xs, xt])).median())
    norm = float(torch.cat([source, target]).norm(dim=1).mean())
    out = {"n_source_tokens": len(source), "n_target_tokens": len(target), "mean_norm": norm,
           "rbf_sigma": sigma,
           "rtn_relative_change": float((moved - source).norm(dim=1).mean()
                                        / source.norm(dim=1).mean())}
    for name, src in (("before_rtn", source), ("after_rtn", moved)):
        linear = float((src.mean(0) - target.mean(0)).norm())
        out[name] = {"linear_mmd": linear, "linear_mmd_rel": linear / norm,
                     "rbf_mmd2": mmd_rbf(subsample(src, MAX_TOKENS), xt, sigma)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="bench/presets/cpu.yaml")
    p.add_argument("--run", default="ner|ner:masakhaner2:lug|ner:conll2003:en|metaxl|1|",
                   help="the preset run whose config is used (a prefix of its run_key)")
    p.add_argument("--meta-lr", type=float, help="override the outer learning rate")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/rep_distance.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    preset = transfer.load_preset(args.preset)
    runs = [r for r in transfer.plan_runs(preset, None, Path(preset["output_dir"]))
            if r["key"].startswith(args.run)]
    if len(runs) != 1:
        print(f"error: {args.run!r} matches {len(runs)} runs of the preset", file=sys.stderr)
        return 2
    cfg = runs[0]["config"]
    if args.meta_lr is not None:
        cfg = dataclasses.replace(cfg, meta_lr=args.meta_lr)
    started = time.time()
    model, _, splits, collator = train_lib.build_trial(cfg, torch.device("cpu"))
    results = {"run_key": runs[0]["key"], "config": cfg.to_dict(), "init": measure(model, splits,
                                                                                   collator)}
    last = {}
    history = train_lib.run_trial(cfg, report=lambda metrics, ckpt: last.update(ckpt))["history"]
    model.load_state_dict(last["model"])
    results["trained"] = measure(model, splits, collator)
    results["history"] = history
    results["wall_time_s"] = round(time.time() - started, 1)

    print(f"{runs[0]['key']}  meta_lr {cfg.meta_lr:g}  (MMD between source and target tokens at "
          f"the RTN site, layer {model.rtn_layer}; smaller = closer)")
    print(f"{'checkpoint':<10} {'linear MMD before':>18} {'after RTN':>10} {'rel. before':>12} "
          f"{'after':>8} {'RBF MMD2 before':>16} {'after RTN':>10} {'|dh|/|h|':>9}")
    for name in ("init", "trained"):
        r = results[name]
        b, a = r["before_rtn"], r["after_rtn"]
        print(f"{name:<10} {b['linear_mmd']:>18.4f} {a['linear_mmd']:>10.4f} "
              f"{b['linear_mmd_rel']:>12.4f} {a['linear_mmd_rel']:>8.4f} {b['rbf_mmd2']:>16.5f} "
              f"{a['rbf_mmd2']:>10.5f} {r['rtn_relative_change']:>9.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"wrote {out} ({results['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
