"""The index-folder layout: the one place that knows file names (DESIGN §2).

```
manifest.json                      the single source of truth; written last, atomically
img_emb/img_emb_{k}.npy            fp16, L2-normalised, row-aligned (clip-retrieval's layout)
text_emb/text_emb_{k}.npy
metadata/metadata_{k}.parquet      key, image_path, caption, extra columns
faiss/{image,text}_{k}.index       one faiss index per shard and modality
bias/{bsap,nnn}_{modality}_{k}.npy per-item offsets; bias/bank_bsap_{modality}.npy the BSAP banks
bias/aug_{method}_{modality}_{k}.faiss   bias-augmented indexes of non-Flat shards
errors.jsonl                       one line per skipped or repaired input
```
"""
from __future__ import annotations

import os
from pathlib import Path

MODALITIES = ("image", "text")
EMB_FILE = {"image": "img_emb", "text": "text_emb"}   # shard ``files`` name of each modality's embeddings
INDEX_FILE = {"image": "image_index", "text": "text_index"}
ERRORS = "errors.jsonl"
BIAS_DIR = "bias"
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


def bias_path(folder: str | os.PathLike, method: str, modality: str, shard_id: int) -> Path:
    """Per-item offsets of ``method`` ('bsap' | 'nnn') for ``modality`` targets in one shard."""
    return Path(folder) / BIAS_DIR / f"{method}_{modality}_{shard_name(shard_id)}.npy"


def bank_path(folder: str | os.PathLike, modality: str) -> Path:
    """The BSAP auxiliary bank used for ``modality`` targets."""
    return Path(folder) / BIAS_DIR / f"bank_bsap_{modality}.npy"


def augmented_path(folder: str | os.PathLike, method: str, modality: str, shard_id: int) -> Path:
    """The bias-augmented faiss index of one non-Flat shard."""
    return Path(folder) / BIAS_DIR / f"aug_{method}_{modality}_{shard_name(shard_id)}.faiss"


def augmented_files(folder: str | os.PathLike) -> list[Path]:
    return sorted((Path(folder) / BIAS_DIR).glob("aug_*.faiss"))
