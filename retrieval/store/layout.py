"""The index-folder layout: the one place that knows file names (DESIGN §2).

```
manifest.json                      the single source of truth; written last, atomically
img_emb/img_emb_{k}.npy            fp16, L2-normalised, row-aligned (clip-retrieval's layout): only for
text_emb/text_emb_{k}.npy          shards whose index does not hold the vectors (Flat, lossy keys)
metadata/metadata_{k}.parquet      key, image_path, caption, extra columns
faiss/{image,text}_{k}[_gN].index  one combined index per shard and modality (``store.combined``),
                                   SQfp16 codes for IVF/HNSW: the only copy of the vectors
bias/gNNNNNN/                      one generation of bias files (the manifest's ``bias.dir``):
  {bsap,nnn}_{modality}_{k}.npy    per-item offsets (also the extra coordinates of the indexes)
  bank_bsap_{modality}.npy         the BSAP banks; ref_nnn_{modality}.npy the NNN reference queries
captions/captions_{k}.npy          rows of shard k that have a caption (packed bits; only when some lack one)
tombstones/{k}_gNNNNNN.npy         rows of shard k deleted as of generation NNNNNN (packed bits)
fts/fts_{k}/                       shard k's full-text index (a tantivy folder, ``store.fts``)
regions/regions_{k}_gN_{emb,boxes}.npy  shard k's ComCLIP regions (``retrieval regions``, ``store.regions``)
tombstones/held_gNNNNNN.parquet    keys deleted by the user: a sync does not bring them back
faiss/trained_{modality}.index     the trained, empty index appended shards are added to (no retraining)
errors.jsonl                       one line per skipped or repaired input
.lock                              held by the one writer (see ``lock.py``)
```
Folders written before generations keep their bias files directly in ``bias/`` (no ``bias.dir``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

MODALITIES = ("image", "text")
EMB_FILE = {"image": "img_emb", "text": "text_emb"}   # shard ``files`` name of each modality's embeddings
INDEX_FILE = {"image": "image_index", "text": "text_index"}
ERRORS = "errors.jsonl"
BIAS_DIR = "bias"
TOMBSTONE_DIR = "tombstones"
FTS_DIR = "fts"
REGIONS_DIR = "regions"
METADATA_ROW_GROUP = 4096  # small row groups: a query reads only the groups its results live in


def shard_name(k: int) -> str:
    """Zero-padded shard number, so that lexical order is shard order (clip-retrieval style)."""
    return f"{k:04d}"


def shard_files(k: int) -> dict[str, str]:
    """Relative paths of shard ``k``'s files, by role."""
    s = shard_name(k)
    return {
        "img_emb": f"img_emb/img_emb_{s}.npy",
        "text_emb": f"text_emb/text_emb_{s}.npy",
        "metadata": f"metadata/metadata_{s}.parquet",
        "image_index": f"faiss/image_{s}.index",
        "text_index": f"faiss/text_{s}.index",
    }


def index_file(k: int, modality: str, generation: Optional[int] = None) -> str:
    """A shard's faiss index of ``modality``; a rewrite (new offsets) is a new file named with its generation."""
    suffix = "" if generation is None else f"_g{generation:06d}"
    return f"faiss/{modality}_{shard_name(k)}{suffix}.index"


def caption_file(k: int) -> str:
    return f"captions/captions_{shard_name(k)}.npy"


def tombstone_file(k: int, generation: int) -> str:
    return f"{TOMBSTONE_DIR}/{shard_name(k)}_g{generation:06d}.npy"


def fts_file(k: int) -> str:
    """Shard ``k``'s full-text folder (a tantivy index)."""
    return f"{FTS_DIR}/fts_{shard_name(k)}"


def held_file(generation: int) -> str:
    return f"{TOMBSTONE_DIR}/held_g{generation:06d}.parquet"


def trained_file(modality: str, generation: Optional[int] = None) -> str:
    suffix = "" if generation is None else f"_g{generation:06d}"
    return f"faiss/trained_{modality}{suffix}.index"


def bias_dir(section: Optional[dict]) -> str:
    """The folder (relative) of the current bias generation named by the manifest's ``bias`` section."""
    return (section or {}).get("dir") or BIAS_DIR


def bias_generation_dir(generation: int) -> str:
    return f"{BIAS_DIR}/g{generation:06d}"


def bias_path(folder: str | os.PathLike, method: str, modality: str, shard_id: int, where: str = BIAS_DIR) -> Path:
    """Per-item offsets of ``method`` ('bsap' | 'nnn') for ``modality`` targets in one shard."""
    return Path(folder) / where / f"{method}_{modality}_{shard_name(shard_id)}.npy"


def bank_path(folder: str | os.PathLike, modality: str, where: str = BIAS_DIR) -> Path:
    """The BSAP auxiliary bank used for ``modality`` targets."""
    return Path(folder) / where / f"bank_bsap_{modality}.npy"


def reference_path(folder: str | os.PathLike, modality: str, where: str = BIAS_DIR) -> Path:
    """The NNN reference queries used for ``modality`` targets (kept so appended shards get offsets)."""
    return Path(folder) / where / f"ref_nnn_{modality}.npy"


def augmented_path(folder: str | os.PathLike, method: str, modality: str, shard_id: int, where: str = BIAS_DIR) -> Path:
    """The bias-augmented faiss index of one non-Flat shard."""
    return Path(folder) / where / f"aug_{method}_{modality}_{shard_name(shard_id)}.faiss"


def legacy_bias_files(manifest: dict) -> list[str]:
    """The bias files a folder from before generations holds directly in ``bias/`` (none otherwise)."""
    section = manifest.get("bias")
    if not section or section.get("dir"):
        return []
    folder = Path(".")
    out = [bank_path(folder, mod).as_posix() for mod in MODALITIES]
    for s in manifest["shards"]:
        if s["rows"] == 0:
            continue
        for mod in MODALITIES:
            for method in ("bsap", "nnn"):
                out.append(bias_path(folder, method, mod, s["id"]).as_posix())
                if section.get("augmented") and s["index"][mod]["key"] != "Flat":
                    out.append(augmented_path(folder, method, mod, s["id"]).as_posix())
    return out


def merge_is_stale(manifest: dict, modality: str) -> bool:
    """Whether ``modality``'s merged index (``ops.merge``) covers a shard that is gone or whose index
    file changed since (a compact or a bias rewrote it); shards added since are searched beside it."""
    entry = (manifest.get("merged") or {}).get(modality)
    if entry is None:
        return False
    files = {str(s["id"]): s["files"].get(INDEX_FILE[modality]) for s in manifest["shards"]}
    return any(files.get(k) != rel for k, rel in entry["shards"].items())


def merged_files(modality: str, generation: int) -> tuple[str, str]:
    """(index, inverted-list data) of a modality's shards merged on disk (``ops.merge``)."""
    stem = f"faiss/merged_{modality}_g{generation:06d}"
    return f"{stem}.index", f"{stem}.ivfdata"
