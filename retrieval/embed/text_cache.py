"""A text tower that starts in a tenth of a second: open_clip's ``encode_text`` traced once with
TorchScript and cached, next to open_clip's tokenizer module loaded on its own.

``import open_clip`` costs ~2 s on top of ``import torch`` on a 2-core machine: its package imports
torchvision (which imports ``torch._dynamo``) and timm, and a text query needs neither. The first
full load of a model on the CPU in fp32 (:func:`save_text_tower`, called by the CLI after it loads a
model) traces ``encode_text`` without the image tower, checks the trace against the eager model on
probe batches of other sizes, and saves it with the tokenizer's settings under :func:`cache_root`.
Later processes (:func:`load_text_tower`) read it back with ``torch.jit.load`` and no open_clip
import. Anything unusual returns None and the caller loads the full model: a tokenizer other than
open_clip's ``SimpleTokenizer``, a GPU or fp16 model, a trace that disagrees, an unreadable or
foreign cache entry, or a weights file whose size or modification time changed since its sha256
was checked (the full load checks it again against the manifest). That full load then replaces a
stale or broken entry, so one slow query repairs it.

The cache stays under ``$RETRIEVAL_CACHE_MAX_MB`` (default 4,096): each new entry evicts the least
recently used others until the rest fit (:func:`prune`; a load marks its entry used). Entries are
keyed by torch and open_clip versions too, so an upgrade's old entries age out this way.

TorchScript is in maintenance mode in torch 2.x; it is the one torch format whose loader needs
neither ``torch._dynamo`` nor a compiler (``torch.export.load`` imports dynamo: ~1 s). Should a
future torch drop it, the cache is skipped and queries take the full load.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from .models import Identified, load_recorded_model, resolve_device, same_model

log = logging.getLogger(__name__)

CACHE_ENV = "RETRIEVAL_CACHE_DIR"
MAX_ENV = "RETRIEVAL_CACHE_MAX_MB"
DEFAULT_MAX_MB = 4096   # ViT-B-32's text tower is ~250 MB, ViT-H-14's ~1.4 GB
LEFTOVER_S = 3600       # a half-written or set-aside folder this old is another process's leftover
FORMAT = 1
PROBES = ("a dog.", "two children play football on a wide green field near a river at dusk .",
          "ÉTÉ – café 東京 🙂 x", "")
_CLEANS = ("lower", "whitespace", "canonicalize")
_TOL = 1e-5


def cache_root() -> Path:
    """``$RETRIEVAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/retrieval``, else ``~/.cache/retrieval``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "retrieval"


def entry_key(identity: dict, torch_version: str, open_clip_version: Optional[str]) -> str:
    """The cache entry of a model identity under these torch and open_clip versions."""
    fields = {k: identity.get(k) for k in ("arch", "pretrained", "weights_sha256", "seed", "embed_dim",
                                           "context_length")}
    fields.update(torch=torch_version, open_clip=open_clip_version, format=FORMAT)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _open_clip_version() -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("open_clip_torch")
    except PackageNotFoundError:
        return None


def _weights_stamp(path: Optional[str]) -> Optional[list]:
    if not path:
        return None
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def tokenizer_module():
    """open_clip's ``tokenizer`` module without running the package's ``__init__`` (torchvision, timm,
    dynamo). The bare parent package is registered only while the submodule loads, then both entries
    leave ``sys.modules``, so a later ``import open_clip`` in the same process imports it whole."""
    import importlib
    import importlib.util

    full = sys.modules.get("open_clip")
    if full is not None and hasattr(full, "tokenizer"):
        return full.tokenizer
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        raise ImportError("open_clip is not installed")
    sys.modules["open_clip"] = importlib.util.module_from_spec(spec)
    try:
        return importlib.import_module("open_clip.tokenizer")
    finally:
        sys.modules.pop("open_clip.tokenizer", None)
        sys.modules.pop("open_clip", None)


def tokenizer_settings(tokenizer) -> Optional[dict]:
    """``{"context_length", "clean"}`` that rebuild ``tokenizer`` as a plain ``SimpleTokenizer`` with the
    same vocabulary and the same tokens on the probes; None for any other tokenizer."""
    import torch

    tk = sys.modules.get(type(tokenizer).__module__)
    if tk is None or type(tokenizer) is not getattr(tk, "SimpleTokenizer", None):
        return None
    if getattr(tokenizer, "reduction_fn", None) is not None:
        return None
    want = tokenizer(list(PROBES))
    for clean in _CLEANS:
        rebuilt = tk.SimpleTokenizer(context_length=tokenizer.context_length, clean=clean)
        if rebuilt.encoder == tokenizer.encoder and torch.equal(rebuilt(list(PROBES)), want):
            return {"context_length": int(tokenizer.context_length), "clean": clean}
    return None


def _tokenizer(tk, context_length: int, clean: str):
    """open_clip's tokenizer with these settings: its module-level ``tokenize`` (a ``SimpleTokenizer``
    with ``clean='lower'``, built when the module loads) for the usual case, else a new one."""
    if clean == "lower":
        return functools.partial(tk.tokenize, context_length=context_length)
    return tk.SimpleTokenizer(context_length=context_length, clean=clean)


class TextTower(Identified):
    """Encodes query texts like the full model's ``encode_text`` (L2-normalised float32 numpy), from
    the cached trace; ``identity`` is the manifest's model identity it was checked against."""

    def __init__(self, traced, tokenizer, identity: dict):
        self.traced, self.tokenizer, self.identity = traced, tokenizer, identity
        self.device = "cpu"

    def texts(self, texts: list[str]) -> np.ndarray:
        import torch

        # the profiling executor's first calls cost 2x the eager time: a one-query process never profits from them
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            y = torch.nn.functional.normalize(self.traced(self.tokenizer(list(texts))).float(), dim=-1)
        return y.numpy()


def _text_module(model):
    """``encode_text`` of a CLIP as a module's forward, over a shallow copy without the image tower
    (so the trace holds the text weights only)."""
    import copy

    import torch

    class TextForward(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, tokens):
            return self.clip.encode_text(tokens)

    text_only = copy.copy(model)
    text_only._modules = {k: v for k, v in model._modules.items() if k != "visual"}
    return TextForward(text_only).eval()


def save_text_tower(clip, root: Optional[Path] = None) -> Optional[Path]:
    """Trace and cache ``clip``'s text tower (a loaded :class:`~retrieval.embed.ClipModel`); the entry's
    folder, or None when this model cannot use the cache (see the module docstring). Never raises."""
    try:
        return _save(clip, root or cache_root())
    except Exception as e:  # noqa: BLE001 - a cache that cannot be written only costs speed
        log.debug("text tower not cached: %s: %s", type(e).__name__, e)
        return None


def _save(clip, root: Path) -> Optional[Path]:
    import torch

    if clip.device != "cpu" or clip.dtype != torch.float32 or not hasattr(torch, "jit"):
        return None
    if clip.identity.get("declared"):   # never loaded from the cache (``load_text_tower``)
        return None
    settings = tokenizer_settings(clip.tokenizer)
    if settings is None:
        return None
    final = root / entry_key(clip.identity, torch.__version__, _open_clip_version())
    if (final / "meta.json").is_file() and _usable(final, clip.identity):
        return final
    probe = clip.tokenizer(list(PROBES))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(_text_module(clip.model), probe[:2], check_trace=False)
        for batch in (probe, probe[2:3]):
            if not torch.allclose(traced(batch), clip.model.encode_text(batch), atol=_TOL, rtol=0):
                log.debug("text tower not cached: the trace disagrees with encode_text")
                return None
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.jit.save(traced, str(tmp / "text.pt"))
    meta = {"format": FORMAT, "identity": clip.identity, "tokenizer": settings,
            "weights_stamp": _weights_stamp(clip.identity.get("weights_path"))}
    (tmp / "meta.json").write_text(json.dumps(meta, default=str))
    if final.exists():   # stale (the weights' stamp changed) or broken: set aside, then replaced
        old = root / f".{final.name}.old-{os.getpid()}"
        try:
            os.rename(final, old)
        except OSError:
            pass
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:  # another process cached it first
        shutil.rmtree(tmp, ignore_errors=True)
    prune(root, keep=final)
    return final


def _usable(folder: Path, identity: dict) -> bool:
    """Whether the entry at ``folder`` serves ``identity`` (what ``load_text_tower`` checks: its format,
    the weights' stamp, the model, a trace torch can read)."""
    return _read(folder, identity) is not None


def max_bytes() -> int:
    """The cache's size bound: ``$RETRIEVAL_CACHE_MAX_MB`` megabytes (default DEFAULT_MAX_MB)."""
    raw = os.environ.get(MAX_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MAX_MB
    except ValueError:
        log.warning("%s=%r is not a number: the cache keeps %d MB", MAX_ENV, raw, DEFAULT_MAX_MB)
        mb = DEFAULT_MAX_MB
    return int(max(mb, 0) * 1e6)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def prune(root: Path, keep: Optional[Path] = None, limit: Optional[int] = None, now: Optional[float] = None) -> list[Path]:
    """Keep the cache under ``limit`` bytes (default ``max_bytes()``): entries least recently used
    first (a load touches its ``meta.json``) are removed until the rest fit, never ``keep`` (the entry
    just written, whatever its size); folders other processes left half-written or set aside
    (``.*.tmp-*``, ``.*.old-*``) an hour old or more go too. The removed folders; never raises."""
    import time

    limit = max_bytes() if limit is None else limit
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = []
        for d in root.iterdir():
            if not d.is_dir():
                continue
            if d.name.startswith("."):
                if (".tmp-" in d.name or ".old-" in d.name) and now - d.stat().st_mtime >= LEFTOVER_S:
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(d)
                continue
            meta = d / "meta.json"
            used = meta.stat().st_mtime if meta.is_file() else d.stat().st_mtime
            entries.append((d == keep, used, d, _size(d)))
        total = sum(e[3] for e in entries)
        for is_kept, _, d, size in sorted(entries):   # the oldest first; ``keep`` sorts last
            if total <= limit or is_kept:
                break
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
            total -= size
    except OSError as e:
        log.debug("text tower cache not pruned: %s", e)
    if removed:
        log.info("text tower cache: removed %d folder(s) to stay under %d MB", len(removed), limit // 10**6)
    return removed


def load_text_tower(identity: dict, root: Optional[Path] = None) -> Optional[TextTower]:
    """The cached text tower of the model ``identity`` names, or None (not cached, or not usable)."""
    if identity.get("declared"):
        return None
    try:
        import torch

        folder = (root or cache_root()) / entry_key(identity, torch.__version__, _open_clip_version())
        tower = _read(folder, identity)
        if tower is not None:
            try:
                os.utime(folder / "meta.json")   # last used: what ``prune`` keeps longest
            except OSError:
                pass
        return tower
    except Exception as e:  # noqa: BLE001 - a broken entry only costs speed: the caller loads the full model
        log.debug("cached text tower unusable: %s: %s", type(e).__name__, e)
        return None


def _read(folder: Path, identity: dict) -> Optional[TextTower]:
    """The entry at ``folder`` as a TextTower for ``identity``, or None (missing, stale, another
    model's, unreadable)."""
    try:
        import torch

        meta_file = folder / "meta.json"
        if not meta_file.is_file():
            return None
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != FORMAT or meta.get("weights_stamp") != _weights_stamp(identity.get("weights_path")):
            return None
        if not same_model(meta["identity"], identity):
            return None
        tokenizer = _tokenizer(tokenizer_module(), **meta["tokenizer"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.load(str(folder / "text.pt"), map_location="cpu")
        return TextTower(traced.eval(), tokenizer, identity)
    except Exception as e:  # noqa: BLE001 - a broken entry only costs speed
        log.debug("cached text tower unusable: %s: %s", type(e).__name__, e)
        return None


def text_model(identity: dict, device: str = "auto"):
    """A model to encode text queries with: the cached :class:`TextTower` when there is one for the
    CPU, else the full model the identity records (loaded, and its text tower cached for next time)."""
    if resolve_device(device) == "cpu":
        tower = load_text_tower(identity)
        if tower is not None:
            return tower
    clip = load_recorded_model(identity, device)
    save_text_tower(clip)
    return clip
