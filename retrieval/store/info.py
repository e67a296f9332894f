"""Summaries of an index folder (``retrieval info``)."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from ..embed.models import describe
from .layout import merge_is_stale
from .manifest import require_manifest
from .writer import read_errors


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def index_info(folder: str | os.PathLike) -> dict:
    """Counts, model, per-shard rows / index types / bytes, and skipped-item reasons."""
    folder = Path(folder)
    m = require_manifest(folder)
    shards = []
    for s in m["shards"]:
        sizes = {name: _size(folder / rel) for name, rel in s["files"].items()}
        shards.append({"id": s["id"], "rows": s["rows"], "index": {k: v["key"] for k, v in s["index"].items()},
                       "params": {k: v["params"] for k, v in s["index"].items()}, "bytes": sizes})
    reasons: Counter = Counter()
    for e in read_errors(folder):
        reasons[f"{e['action']}: {e['stage']}: {str(e.get('reason', '')).split(':')[0]}"] += 1
    return {"path": str(folder), "complete": m.get("complete", False), "model": m["model"],
            "columns": metadata_columns(folder, m), "held": (m.get("held") or {}).get("count", 0),
            "model_text": describe(m["model"]), "corpus": m["corpus"], "counts": m.get("counts", {}),
            "shards": shards, "total_bytes": sum(sum(s["bytes"].values()) for s in shards),
            "reasons": dict(reasons.most_common()), "stats": m.get("stats", {}), "build": m.get("build", {}),
            "bias": _bias_info(folder, m), "merged": _merged_info(folder, m)}


def _merged_info(folder: Path, m: dict) -> dict:
    """{modality: what its merged index (``ops.merge``) covers, its bytes, whether it is stale, and the
    shards added since (searched beside it)}."""
    out = {}
    for mod, e in (m.get("merged") or {}).items():
        beside = [s for s in m["shards"] if s["rows"] and mod in s["index"] and str(s["id"]) not in e["shards"]]
        out[mod] = {"shards": len(e["shards"]), "vectors": e.get("ntotal", 0), "stale": merge_is_stale(m, mod),
                    "bytes": sum(_size(folder / rel) for rel in e.get("files", {})), "beside": len(beside)}
    return out


def metadata_columns(folder: Path, m: dict) -> dict[str, str]:
    """{column: its Arrow type} of the metadata (the newest shard's file; internal columns left out)."""
    import pyarrow.parquet as pq

    shards = [s for s in m["shards"] if s["rows"]]
    if not shards:
        return {}
    try:
        schema = pq.read_schema(folder / shards[-1]["files"]["metadata"])
    except Exception:  # noqa: BLE001 - an unreadable file is named by open and verify; info still prints
        return {}
    return {f.name: str(f.type) for f in schema if f.name != "_source"}


def _bias_info(folder: Path, m: dict) -> dict:
    """The manifest's bias section, summarised."""
    if "bias" not in m:
        return {"pending": m["bias_pending"]} if m.get("bias_pending") else {}
    b = m["bias"]
    return {"bank": b.get("bank"), "bank_rows": b.get("bank_rows"), "nnn_k": b.get("nnn_k"), "tau": b.get("tau"),
            "precision": b.get("precision", "fp32"), "stale": bool(b.get("stale"))}


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_info(info: dict) -> str:
    c = info["counts"]
    nocap = f" ({c['captionless']} without a caption)" if c.get("captionless") else ""
    dead = f"; {c['deleted']} deleted rows (`retrieval compact` reclaims them)" if c.get("deleted") else ""
    dead += f"; {info['held']} deleted keys held out of syncs" if info.get("held") else ""
    lines = [
        f"index     {info['path']}{'' if info['complete'] else '  (INCOMPLETE: re-run the build to resume)'}",
        f"model     {info['model_text']}  logit_scale={info['model'].get('logit_scale', 0):.2f}",
        f"corpus    {info['corpus'].get('type')}: {info['corpus'].get('path')}",
        f"items     {c.get('live', c.get('rows', 0))} of {c.get('inputs', 0)} inputs indexed and live{nocap}; "
        f"skipped {c.get('skipped', 0)}, repaired {c.get('repaired', 0)}{dead}",
        f"columns   {', '.join(f'{n} ({t})' for n, t in info.get('columns', {}).items()) or '-'}",
        f"size      {_human(info['total_bytes'])} in {len(info['shards'])} shards",
        "shard      rows  image index          text index           bytes",
    ]
    for s in info["shards"]:
        lines.append(f"{s['id']:>5} {s['rows']:>9}  {s['index'].get('image', '-'):<20} "
                     f"{s['index'].get('text', '-'):<20} {_human(sum(s['bytes'].values()))}")
    if info["reasons"]:
        lines.append("skipped / repaired items (see errors.jsonl):")
        lines += [f"  {n:>7}  {r}" for r, n in info["reasons"].items()]
    b = info.get("bias") or {}
    if b.get("pending"):
        lines.append(f"bias      pending (bank {b['pending'].get('bank')}): searchable with plain CLIP; BSAP/NNN once "
                     f"the build publishes the offsets (a stopped build: re-run it, or `retrieval bias INDEX`)")
    elif b:
        what = "sampled captions" if b["bank"] == "corpus" else "prompts"
        lines.append(f"bias      bank={b['bank']} ({(b.get('bank_rows') or {}).get('image')} {what}), "
                     f"nnn_k={b['nnn_k']}, tau={b['tau']:.2f}, {b.get('precision', 'fp32')} math; "
                     f"in each index's extra coordinates"
                     + (" (STALE: run `retrieval bias`)" if b["stale"] else ""))
    else:
        lines.append("bias      none: run `retrieval bias INDEX` for exact BSAP/NNN search")
    for mod, e in (info.get("merged") or {}).items():
        state = (" STALE: a covered shard was rewritten, searches use the shards; run `retrieval merge`"
                 if e["stale"] else f"; {e['beside']} shard(s) added since, searched beside it (`retrieval compact` "
                 f"merges them in)" if e["beside"] else "")
        lines.append(f"merged    {mod}: {e['shards']} shards, {e['vectors']} vectors, {_human(e['bytes'])}{state}")
    st = info.get("stats") or {}
    if st.get("elapsed_s"):
        lines.append(f"build     {st['elapsed_s']:.1f} s, {st.get('rows_per_s') or 0:.1f} rows/s")
    return "\n".join(lines)
