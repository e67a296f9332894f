"""``retrieval import``: a clip-retrieval ``inference`` output folder -> an index folder, no re-embedding.

The source (read, never modified) is clip-retrieval's layout, one part per inference partition:

```
SRC/img_emb/img_emb_{i}.npy        fp16 (or fp32) [rows, d], L2-normalised by clip-retrieval
SRC/text_emb/text_emb_{i}.npy      the captions' embeddings, row-aligned (absent with --enable_text False)
SRC/metadata/metadata_{i}.parquet  image_path, caption and the input's other columns, row-aligned
```
Parts are read in the numeric order of ``i`` (clip-retrieval zero-pads it, so this is also its
lexical order and the order autofaiss and clip back number rows in): our global id of a row is its
row number in clip-retrieval, and ``/knn-service`` ids keep meaning the same rows after a switch.

Every part is checked before anything is written (row counts npy vs Parquet, dtypes, widths against
the declared model, sampled L2 norms, finite values); a mismatch is one line naming the file. Then
the rows stream through the store's shard writer in slices of at most ``shard_size`` rows (read
from the npy files with plain reads, not memory maps), so memory stays at about one shard whatever
the source size. Nothing is
linked: our shards keep IVF/HNSW vectors in the index codes and Flat ones in npy of our own naming,
and the metadata gains a ``key`` column, so every file is written anew. clip-retrieval's own
``image.index``/``text.index`` (autofaiss) are not adopted: our indexes carry the BSAP/NNN offsets as
extra coordinates, and autofaiss's PQ codes cannot give the vectors back; the indexes are built
from the embeddings instead. A killed import resumes from its last committed shard when rerun.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np

from ..embed import declared_identity
from ..errors import CorpusError, IndexFolderError
from ..store.checks import check_unit_rows
from ..store.indexer import DEFAULT_MEMORY_BUDGET, DEFAULT_SHARD_SIZE, committed_rows, write_chunks
from ..store.lock import write_lock
from ..store.manifest import load_manifest, new_manifest
from ..store.outfolder import check_index_key, prepare_out
from ..store.rows import number_keys
from .bias import BiasExtension

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("retrieval.import")
NORM_TOLERANCE = 0.01   # fp16 rounding moves a unit norm by ~1e-3
NORM_SAMPLE = 1024      # rows per file whose norms are checked (evenly spaced)
_PART = re.compile(r"^img_emb_(\d+)\.npy$")


@dataclass
class Part:
    """One clip-retrieval partition: its files and row count."""

    number: int
    img: Path
    text: Optional[Path]
    metadata: Path
    rows: int


def scan_source(src: str | os.PathLike) -> tuple[list[Part], int, str]:
    """The parts of a clip-retrieval inference folder, checked; (parts, dim, source dtype)."""
    src = Path(src)
    if not src.is_dir():
        raise CorpusError(f"{src} is not a folder", usage=True)
    if (src / "manifest.json").is_file() and '"format_version"' in (src / "manifest.json").read_text(errors="replace"):
        raise CorpusError(f"{src} is an index folder of this engine (manifest.json), not clip-retrieval's inference "
                          f"output: serve or search it directly", usage=True)
    if not (src / "img_emb").is_dir():
        if (src / "image.index").exists():
            raise CorpusError(f"{src} is a clip-retrieval index folder (image.index): import the inference output "
                              f"folder it was built from (img_emb/, text_emb/, metadata/); its vectors are needed")
        raise CorpusError(f"{src} has no img_emb/ folder: not a clip-retrieval inference output")
    numbered = sorted((int(m.group(1)), p) for p in (src / "img_emb").iterdir() if (m := _PART.match(p.name)))
    if not numbered:
        raise CorpusError(f"{src / 'img_emb'} holds no img_emb_N.npy files")
    has_text = (src / "text_emb").is_dir() and any((src / "text_emb").iterdir())
    parts, dim, dtype = [], None, None
    for n, img in numbered:
        suffix = img.name[len("img_emb_"):-len(".npy")]
        text = src / "text_emb" / f"text_emb_{suffix}.npy"
        meta = src / "metadata" / f"metadata_{suffix}.parquet"
        if has_text and not text.is_file():
            raise CorpusError(f"{text} is missing (text_emb/ holds other parts)")
        if not meta.is_file():
            raise CorpusError(f"{meta} is missing")
        shape, dt = NpyRows(img).header()
        if has_text:
            tshape, tdt = NpyRows(text).header()
            if tshape != shape or tdt != dt:
                raise CorpusError(f"{text} is {tdt}{list(tshape)}, but {img.name} is {dt}{list(shape)}")
        rows = parquet_rows(meta)
        if rows != shape[0]:
            raise CorpusError(f"{meta} has {rows} rows, {img.name} has {shape[0]}")
        if dim is not None and (shape[1], dt) != (dim, dtype):
            raise CorpusError(f"{img} is {dt}[{shape[1]}], earlier parts are {dtype}[{dim}]")
        dim, dtype = shape[1], dt
        parts.append(Part(n, img, text if has_text else None, meta, shape[0]))
    return parts, int(dim), str(dtype)


def parquet_rows(path: Path) -> int:
    """Rows of a metadata Parquet file; CorpusError naming it when it is not Parquet."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a file that is not Parquet
        raise CorpusError(f"{path} is not a readable Parquet file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None


def check_norms(path: Path, zero_ok: bool) -> None:
    """Sampled rows of the npy file ``path`` must be finite and unit-norm (zero rows allowed for
    ``zero_ok``: an item without a caption)."""
    npy = NpyRows(path)
    n = npy.shape[0]
    if not n:
        return
    rows = np.unique(np.linspace(0, n - 1, min(NORM_SAMPLE, n)).astype(np.int64))
    x = np.asarray(npy.take(rows), np.float32)
    if not np.isfinite(x).all():
        raise CorpusError(f"{path} holds NaN or infinite values (row {int(rows[~np.isfinite(x).all(1)][0])})")
    norms = np.linalg.norm(x, axis=1)
    bad = np.abs(norms - 1) > NORM_TOLERANCE
    if zero_ok:
        bad &= norms > 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CorpusError(f"{path} is not L2-normalised (row {int(rows[i])} has norm {norms[i]:.4f}); "
                          f"pass --normalize to normalise the vectors while importing")


def _unit(x: np.ndarray, path: Path, zero_ok: bool) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if not np.isfinite(x).all():
        raise CorpusError(f"{path} holds NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not zero_ok and (norms == 0).any():
        raise CorpusError(f"{path} has an all-zero row ({int(np.flatnonzero(norms[:, 0] == 0)[0])})")
    return x / np.where(norms == 0, 1, norms)


def _chunks(parts: list[Part], start: int, size: int, normalize: bool, dim: int,
            has_key: bool, schema) -> Iterator[tuple[np.ndarray, np.ndarray, "pa.Table"]]:
    """Row-aligned (image, text, metadata rows) slices of at most ``size`` rows, from global row
    ``start``: the npy files read slice by slice, the Parquet streamed in batches."""
    import pyarrow.parquet as pq

    first = 0
    for part in parts:
        if first + part.rows <= start:
            first += part.rows
            continue
        img = NpyRows(part.img)
        txt = NpyRows(part.text) if part.text else None
        lo = 0
        for batch in pq.ParquetFile(part.metadata).iter_batches(batch_size=size):
            hi = lo + batch.num_rows
            skip = max(start - first - lo, 0)
            if skip < batch.num_rows:
                rows = _metadata(batch.slice(skip), first + lo + skip, has_key, schema)
                yield _rows_chunk(part, img, txt, lo + skip, hi, rows, normalize, dim)
            lo = hi
        first += part.rows


class NpyRows:
    """Rows of a 2-D npy file read with plain file reads (no memory map: the pages read are the
    kernel's cache, not the importing process's memory)."""

    def __init__(self, path: Path):
        try:
            with open(path, "rb") as f:
                fmt = np.lib.format
                version = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, fortran, dtype = read(f)
                self.offset = f.tell()
        except (OSError, ValueError) as e:
            raise CorpusError(f"{path} is not a readable npy file: {e}") from None
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        if len(self.shape) != 2 or self.dtype not in (np.float16, np.float32):
            raise CorpusError(f"{path} must be a 2-D float16/float32 array, got {self.dtype}{list(self.shape)}")
        if fortran:
            raise CorpusError(f"{path} is stored in Fortran order; rewrite it in C order")
        want = self.offset + self.shape[0] * self.shape[1] * self.dtype.itemsize
        if os.path.getsize(path) < want:
            raise CorpusError(f"{path} is truncated ({os.path.getsize(path)} bytes, its header says {want})")

    def header(self) -> tuple[tuple, str]:
        return self.shape, str(self.dtype)

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi), in one read."""
        d = self.shape[1]
        with open(self.path, "rb") as f:
            f.seek(self.offset + lo * d * self.dtype.itemsize)
            out = np.fromfile(f, self.dtype, (hi - lo) * d)
        if len(out) != (hi - lo) * d:
            raise CorpusError(f"{self.path} is truncated (rows {lo}-{hi} of {self.shape[0]})")
        return out.reshape(hi - lo, d)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (a sample)."""
        return np.concatenate([self.rows(int(i), int(i) + 1) for i in rows])


def _metadata(batch, first: int, has_key: bool, schema):
    """A Parquet batch as our metadata rows (a Table in ``schema``): their key column as strings
    when they have one (checked unique up front), else clip-retrieval's row number, so its ids stay
    valid; pandas' index column dropped."""
    import pyarrow as pa
    import pyarrow.compute as pc

    key = pc.cast(batch.column("key"), pa.string()) if has_key else number_keys(first, batch.num_rows)
    return pa.table({"key": key, **{f.name: batch.column(f.name) for f in schema if f.name != "key"}}).cast(schema)


def _rows_chunk(part: Part, img, txt, lo: int, hi: int, rows, normalize: bool,
                dim: int) -> tuple[np.ndarray, np.ndarray, "pa.Table"]:
    x = img.rows(lo, hi)
    t = txt.rows(lo, hi) if txt is not None else np.zeros((hi - lo, dim), x.dtype)
    if normalize:
        x, t = _unit(x, part.img, False), _unit(t, part.text or part.img, True)
    else:  # every row, not only the sample checked up front: one NaN row would rank first for every query
        try:
            check_unit_rows(x, str(part.img), first=lo)
            check_unit_rows(t, str(part.text or part.img), zero_ok=True, first=lo)
        except ValueError as e:
            raise CorpusError(f"{str(e).split(';')[0]}; pass --normalize to normalise the vectors while importing "
                              f"(NaN and infinite rows cannot be imported)") from None
    return x, t, rows  # in the source dtype (fp16 from clip-retrieval): converted once, by the writer


def check_keys(parts: list[Part]) -> None:
    """The source's own ``key`` column must be unique across all parts (read before anything is written)."""
    import pyarrow.parquet as pq

    seen: set = set()
    for part in parts:
        for i, key in enumerate(pq.read_table(part.metadata, columns=["key"]).column("key").to_pylist()):
            if key is None or str(key) == "":
                raise CorpusError(f"{part.metadata}: row {i} has no key (null or empty); give every row a key, or "
                                  f"drop the key column to number the rows")
            key = str(key)
            if key in seen:
                raise CorpusError(f"{part.metadata}: key {key!r} (row {i}) is not unique")
            seen.add(key)


def _schema(parts: list[Part]):
    """Our metadata schema: ``key`` first, then clip-retrieval's columns (pandas' index dropped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(parts[0].metadata).remove_metadata()
    fields = [f for f in schema if f.name not in ("key", "__index_level_0__")]
    for part in parts[1:]:
        other = pq.read_schema(part.metadata).remove_metadata()
        if [f.name for f in other if f.name != "__index_level_0__"] != [f.name for f in schema if f.name != "__index_level_0__"]:
            raise CorpusError(f"{part.metadata} has columns {other.names}, {parts[0].metadata.name} has {schema.names}")
    return pa.schema([pa.field("key", pa.string())] + fields), "key" in schema.names


def import_folder(src: str | os.PathLike, out: str | os.PathLike, model: str, pretrained: Optional[str] = None, *,
                  logit_scale: Optional[float] = None, index_key: Optional[str] = None, shard_size: int = DEFAULT_SHARD_SIZE,
                  bias_bank: Optional[str] = "corpus", normalize: bool = False,
                  memory_budget: int = DEFAULT_MEMORY_BUDGET, recall_target: float = 0.95,
                  image_root: Optional[str] = None) -> dict:
    """Turn clip-retrieval's inference output ``src`` into the index folder ``out``; returns the manifest.

    ``model``/``pretrained`` declare the CLIP that made the embeddings (recorded as declared: a
    model opened against the index is checked for its width and ``logit_scale`` only).
    ``bias_bank``: 'corpus' (sampled captions, no model needed), 'generic' (loads the model) or None.
    ``image_root`` is where relative ``image_path`` values live (for serving result images).
    A folder this function left incomplete (killed) is resumed; a complete one is refused.
    """
    if shard_size <= 0:
        raise ValueError("shard_size must be positive")
    t0 = time.perf_counter()
    out, src = Path(out), Path(src).resolve()
    m = load_manifest(out)  # a folder this import left incomplete is resumed; anything else is refused
    if m is not None and (m.get("complete") or m["corpus"].get("path") != str(src)):
        raise IndexFolderError(f"{out} already holds an index; use another folder", usage=True)
    parts, dim, dtype = scan_source(src)
    identity = declared_identity(model, pretrained, logit_scale)
    if identity["embed_dim"] != dim:
        raise CorpusError(f"{parts[0].img} holds {dim}-d vectors, but {identity['arch']} makes "
                          f"{identity['embed_dim']}-d embeddings: declare the model that made them")
    if not normalize:
        for p in parts:
            check_norms(p.img, zero_ok=False)
            if p.text:
                check_norms(p.text, zero_ok=True)
    schema, has_key = _schema(parts)
    if has_key:
        check_keys(parts)
    corpus = {"type": "clip-retrieval", "path": str(src), "image_root": str(Path(image_root).resolve()) if image_root else None,
              "dtype": dtype, "parts": len(parts), "rows": sum(p.rows for p in parts)}
    modalities = ["image", "text"] if parts[0].text else ["image"]
    settings = {"shard_size": shard_size, "index_key": index_key, "memory_budget": memory_budget,
                "recall_target": recall_target, "dim": dim, "max_pixels": None, "modalities": modalities,
                "total_rows": corpus["rows"]}
    check_index_key(index_key, dim)
    clip = None
    if bias_bank == "generic":
        from ..embed import load_model

        clip = load_model(model, pretrained)
    manifest = m or new_manifest(identity, corpus, dict(settings))
    prepare_out(out)
    with write_lock(out):
        start = committed_rows(manifest)
        if start:
            log.info("resuming the import of %s at row %d", src, start)
        chunks = _chunks(parts, start, shard_size, normalize, dim, has_key, schema)
        manifest = write_chunks(out, manifest, chunks, schema, settings, BiasExtension(out, clip, bias_bank))
    log.info("imported %d rows from %s in %.1f s", manifest["counts"]["rows"], src, time.perf_counter() - t0)
    return manifest
