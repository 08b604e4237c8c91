"""Peer figures the report marks on its quality charts: what a user gets without edgecomp.

A manifest may carry its own (a top-level ``peers`` block: ``{"source", "conditions", "rows": {name:
{size_mb, cos_mean, p50_ms_1t}}}``); otherwise the package's table for that model is used. That table
(edgecomp/data/peers/<model>.json) holds only figures this project measured, with the command and date
(scripts/bench_peers.py -> results/peers/); a model without one gets no peer marks.
"""

from __future__ import annotations

import json
from importlib import resources


def shipped_peers(model: str) -> dict | None:
    f = resources.files("edgecomp") / "data" / "peers" / f"{model}.json"
    if not f.is_file():
        return None
    return json.loads(f.read_text(encoding="utf-8"))


def peer_figures(exports) -> dict | None:
    """The peers of the exports' model (one model: peers of different models are not comparable), with
    latency dropped when this export was timed at another batch / sequence length than the peers."""
    models = {m["model"]["name"] for _, m in exports}
    if len(models) != 1:
        return None
    m = exports[0][1]
    peers = m.get("peers") or shipped_peers(models.pop())
    if not peers or not peers.get("rows"):
        return None
    lat = next(((a.get("metrics") or {}).get("latency_ms") for a in m.get("artifacts", [])
                if (a.get("metrics") or {}).get("latency_ms")), None) or {}
    cond = peers.get("conditions") or {}
    same_timing = lat.get("batch") == cond.get("batch") and lat.get("seq_len") == cond.get("seq_len")
    rows = {n: (r if same_timing else {k: v for k, v in r.items() if k != "p50_ms_1t"}) for n, r in peers["rows"].items()}
    note = "" if same_timing else (f" Their latency (batch {cond.get('batch')}, sequence {cond.get('seq_len')}) is not "
                                   "drawn: this export was timed at another shape.")
    return {**peers, "rows": rows, "note": note}
