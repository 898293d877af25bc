"""The named methods a grid runs and a report shows: each is a `TrialConfig` method
(`metaxl_core.config.METHODS`) with fixed fields, a title, and its place in tables.

A sweep (`sweeps/pairs.py`) searches the base methods and lets the searcher set the fields a
variant fixes (e.g. `rtn_design`); a grid (`sweeps/grid.py`) runs the variants by name. Runs are
named back from their tags/params by `variant_of`, so a sweep trial with `rtn_design: identity`
lands in the same report column as the grid's `metaxl_identity`.
"""

from __future__ import annotations

# name -> (TrialConfig fields, title); the order is the column order of tables and legends
VARIANTS: dict[str, tuple[dict, str]] = {
    "target_only": ({"method": "target_only"}, "target only"),
    "source_only": ({"method": "source_only"}, "source only"),
    "joint": ({"method": "joint"}, "joint (JT)"),
    # controls: joint training on T1 only; the RTN frozen at its initialisation
    "joint_t1": ({"method": "joint_t1"}, "JT on T1 (control)"),
    "metaxl": ({"method": "metaxl", "hypergradient": "exact"}, "MetaXL exact"),
    "metaxl_identity": ({"method": "metaxl", "rtn_design": "identity"}, "MetaXL identity RTN"),
    "frozen_rtn": ({"method": "frozen_rtn"}, "frozen RTN (control)"),
    "metaxl_trunc": ({"method": "metaxl", "hypergradient": "truncated"}, "MetaXL truncated"),
    # beyond the paper; the layer variants need rtn_layers naming two or more layers
    "metaxl_fd": ({"method": "metaxl", "hypergradient": "finite_difference"},
                  "MetaXL first-order (FD)"),
    "metaxl_layers": ({"method": "metaxl", "rtn_mixing": "sequential", "rtn_design": "identity"},
                      "MetaXL 2 RTNs sequential"),
    "metaxl_softmax": ({"method": "metaxl", "rtn_mixing": "softmax"},
                       "MetaXL 2 RTNs softmax-mixed"),
    "metaxl_per_source": ({"method": "metaxl", "rtn_per_source": True, "source_sampling": "learned"},
                          "MetaXL RTN per source, learned sampling"),
}
LAYER_VARIANTS = ("metaxl_layers", "metaxl_softmax")
# what a report compares with JT: every MetaXL variant and both controls
GAIN_VARIANTS = [name for name in VARIANTS
                 if name.startswith("metaxl") or name in ("frozen_rtn", "joint_t1")]


def fields_of(name: str) -> dict:
    """The TrialConfig fields a variant fixes."""
    return dict(VARIANTS[name][0])


def title_of(name: str) -> str:
    """The variant's title in tables and legends (the name itself when unknown)."""
    return VARIANTS[name][1] if name in VARIANTS else name


def ordered(names) -> list[str]:
    """Names in table order: known variants first, in VARIANTS order, then the rest sorted."""
    names = set(names)
    return [n for n in VARIANTS if n in names] + sorted(names - set(VARIANTS))


def variant_of(tags: dict, params: dict) -> str:
    """A logged run's variant: its `method` tag, except that a MetaXL run with the truncated
    hypergradient or the identity RTN is `metaxl_trunc` / `metaxl_identity`."""
    method = tags.get("method") or params.get("method", "?")
    hyper = tags.get("hypergradient") or params.get("hypergradient")
    if method == "metaxl" and hyper == "truncated":
        return "metaxl_trunc"
    if method == "metaxl" and (tags.get("rtn_design") or params.get("rtn_design")) == "identity":
        return "metaxl_identity"
    return method
