"""Load an open_clip model from a hub tag or a local checkpoint, with a stable identity.

Accepted forms (``load_model(model, pretrained)``):
- ``("ViT-B-32", "laion2b_s34b_b79k")``: an open_clip arch and pretrained tag (hub, needs network
  or a warm cache);
- ``("local-dir:PATH", None)`` or just a folder holding ``open_clip_config.json``: open_clip's
  local folder scheme (config + weights, no network);
- ``("ViT-B-32", "/path/weights.safetensors" | "/path/weights.pt")``: arch + a local file, ``.pt``
  read with ``torch.load(weights_only=True)``;
- ``("ViT-B-32", "random")``: random init (seeded), for benchmarks and tests only.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import ModelLoadError
from .skip_init import skipped_init

RANDOM = "random"
_WEIGHT_NAMES = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors",
    "open_clip_pytorch_model.bin", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
)


class Identified:
    """What a model's ``identity`` says of it: embedding width, logit scale, context length."""

    identity: dict

    @property
    def dim(self) -> int:
        return int(self.identity["embed_dim"])

    @property
    def logit_scale(self) -> float:
        return float(self.identity["logit_scale"])

    @property
    def context_length(self) -> int:
        return int(self.identity["context_length"])


@dataclass
class ClipModel(Identified):
    """A loaded CLIP: the torch module, its transforms and tokenizer, and its identity."""

    model: Any
    preprocess: Callable
    tokenizer: Callable
    device: str
    dtype: Any
    identity: dict = field(default_factory=dict)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_later(path: Optional[str]) -> Callable[[], Optional[str]]:
    """Start hashing ``path`` in a daemon thread (hashlib releases the GIL: it overlaps the model
    load, which reads the same file); the returned function waits for the hex digest (None for no
    path) and raises what hashing raised. A daemon, so a failed load never waits for it at exit."""
    if not path:
        return lambda: None
    import threading
    from concurrent.futures import Future

    digest: Future = Future()

    def work() -> None:
        try:
            digest.set_result(sha256_file(path))
        except BaseException as e:  # noqa: BLE001 - handed to the caller by result()
            digest.set_exception(e)

    threading.Thread(target=work, name="sha256-weights", daemon=True).start()
    return digest.result


def resolve_device(device: str = "auto") -> str:
    """'auto' (cuda when torch sees a GPU, else cpu), 'cpu', 'cuda' or 'cuda:N' (checked)."""
    import re

    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    m = re.fullmatch(r"cuda(?::(\d+))?", device or "")
    if m is None:
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but torch sees no CUDA GPU")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise ModelLoadError(f"device {device!r} requested but torch sees {torch.cuda.device_count()} GPU(s)")
    return device


def _normalise_spec(model: str, pretrained: Optional[str]) -> tuple[str, Optional[str]]:
    """Turn a bare folder into open_clip's ``local-dir:`` scheme."""
    if not model.startswith(("local-dir:", "hf-hub:")) and os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "open_clip_config.json")):
            raise ModelLoadError(f"model folder {model} has no open_clip_config.json")
        model = "local-dir:" + model
    if model.startswith("local-dir:"):
        folder = model[len("local-dir:"):]
        model = "local-dir:" + os.path.abspath(folder)
        pretrained = None
    return model, pretrained


def _weights_file(model: str, pretrained: Optional[str]) -> Optional[str]:
    if model.startswith("local-dir:"):
        folder = Path(model[len("local-dir:"):])
        for name in _WEIGHT_NAMES:
            if (folder / name).is_file():
                return str(folder / name)
        found = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt*"))
        if not found:
            raise ModelLoadError(f"model folder {folder} holds no weights file (*.safetensors, *.bin, *.pt)")
        return str(found[0])
    if pretrained and pretrained != RANDOM and (os.sep in pretrained or os.path.splitext(pretrained)[1]):
        if not os.path.isfile(pretrained):
            raise ModelLoadError(f"checkpoint file not found: {pretrained}")
        check_checkpoint(pretrained)
        return os.path.abspath(pretrained)
    return None


def check_checkpoint(path: str) -> None:
    """ModelLoadError unless ``path`` starts like a checkpoint: safetensors (a JSON header), a torch
    zip archive, or a pickle (what ``torch.save`` writes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise ModelLoadError(f"cannot read checkpoint {path}: {e.strerror or type(e).__name__}") from None
    if not (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" or (len(head) == 9 and head[8:9] == b"{")):
        raise ModelLoadError(f"{path} is not a model checkpoint (expected a .safetensors file or a torch "
                             f"checkpoint); pass an open_clip pretrained tag or a weights file")


class _OtherThreads(logging.Filter):
    """Drops the records, up to ERROR, that the thread which made it logs."""

    def __init__(self):
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread or record.levelno > logging.ERROR


@contextlib.contextmanager
def _quiet_this_thread():
    """Log records up to ERROR from this thread dropped by the root logger's handlers inside the block
    (open_clip's own lines while a model loads); other threads (a server's requests) log as usual."""
    f = _OtherThreads()
    handlers = list(logging.getLogger().handlers) + ([logging.lastResort] if logging.lastResort else [])
    for h in handlers:
        h.addFilter(f)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(f)


def load_model(model: str = "ViT-B-32", pretrained: Optional[str] = "laion2b_s34b_b79k",
               device: str = "auto", precision: Optional[str] = None, seed: int = 0) -> ClipModel:
    """Load a CLIP for inference; fail fast with a one-line :class:`ModelLoadError`.

    ``precision`` defaults to fp16 on CUDA and fp32 on CPU.
    """
    import torch

    from .._compat import import_open_clip

    open_clip = import_open_clip()
    device = resolve_device(device)
    precision = precision or ("fp16" if device.startswith("cuda") else "fp32")
    model, pretrained = _normalise_spec(model, pretrained)
    weights = _weights_file(model, pretrained)
    is_local = model.startswith("local-dir:")
    arch = model
    if not is_local and arch not in open_clip.list_models():
        raise ModelLoadError(f"unknown open_clip model {arch!r} (see open_clip.list_models())")
    if not is_local and pretrained not in (None, RANDOM) and weights is None:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if pretrained not in tags:
            raise ModelLoadError(f"unknown pretrained tag {pretrained!r} for {arch}; known: {', '.join(tags) or 'none'}")
    digest = sha256_later(weights)   # the identity's hash, read while the model is built and loaded
    torch.manual_seed(seed)
    # a full checkpoint (a tag, a file, a model folder) replaces every weight: no random init
    # first, and open_clip raises rather than return the model unloaded (``skip_init``)
    loads = is_local or pretrained not in (None, RANDOM)
    try:   # open_clip logs its failures itself; ours is the one line below
        with _quiet_this_thread(), skipped_init(loads):
            net, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=None if pretrained == RANDOM else pretrained,
                precision=precision, device=device, weights_only=True, require_pretrained=loads)
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as e:  # hub errors, bad checkpoints, shape mismatches: one clear line
        what = weights or (f"{arch} / {pretrained}" if pretrained else arch)
        hint = ""
        if weights is None and pretrained not in (None, RANDOM) and not is_local:
            hint = " (hub weights need network or a warm cache; pass a local file with --pretrained PATH)"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load model {what}: {msg[:300]}{hint}") from None
    net.eval()
    cfg_dim = getattr(net, "embed_dim", None)
    if cfg_dim is None:
        with torch.no_grad():
            cfg_dim = int(net.encode_text(tokenizer(["a"]).to(device)).shape[-1])
    image_size = getattr(getattr(net, "visual", None), "image_size", None)
    identity = {
        "arch": arch,
        "pretrained": pretrained,
        "weights_path": weights,
        "weights_sha256": digest(),
        "embed_dim": int(cfg_dim),
        "logit_scale": float(net.logit_scale.exp().item()),
        "context_length": int(getattr(tokenizer, "context_length", 77) or 77),
        "image_size": list(image_size) if isinstance(image_size, (tuple, list)) else image_size,
        "open_clip_version": getattr(open_clip, "__version__", None),
    }
    if pretrained == RANDOM:
        identity["seed"] = seed
    return ClipModel(net, preprocess, tokenizer, device, next(net.parameters()).dtype, identity)


def declared_identity(model: str, pretrained: Optional[str], logit_scale: Optional[float] = None) -> dict:
    """The identity of a model a user declares made some embeddings (``retrieval import``), read
    from open_clip's config without loading the model: arch, tag, embed_dim, context length, and the
    logit scale, with where it came from (``logit_scale_source``): ``declared`` when given, else
    ``checkpoint`` when the weights are a local file or a hub tag's file already in huggingface_hub's
    cache (read from it: safetensors without torch), else ``assumed`` (100, every released CLIP's:
    open_clip's pretrained config records no logit scale, and nothing is downloaded).
    Marked ``declared``: only the dims, and a logit scale that was declared or read, can be checked
    against a model opened later."""
    import json

    from .._compat import import_open_clip

    model, pretrained = _normalise_spec(model, pretrained)
    if model.startswith("local-dir:"):
        path = Path(model[len("local-dir:"):]) / "open_clip_config.json"
        try:
            cfg = json.loads(path.read_text())["model_cfg"]
        except (OSError, ValueError, KeyError) as e:
            raise ModelLoadError(f"cannot read the model config {path}: {type(e).__name__}") from None
    else:
        cfg = _packaged_config(model)
        if cfg is None:  # not a packaged config (e.g. hf-hub:): ask open_clip itself (imports torch)
            cfg = import_open_clip().get_model_config(model)
        if cfg is None:
            raise ModelLoadError(f"unknown open_clip model {model!r} (see open_clip.list_models())")
    source = "declared"
    if logit_scale is None:
        weights = _weights_file(model, pretrained) if pretrained != RANDOM else None
        if weights is None and pretrained not in (None, RANDOM):
            weights = cached_hub_weights(model, pretrained)
        if weights is not None:
            logit_scale, source = checkpoint_logit_scale(weights), "checkpoint"
        else:
            logit_scale, source = 100.0, "assumed"
    if not (logit_scale > 0 and math.isfinite(logit_scale)):
        raise ValueError(f"the logit scale must be a positive number, got {logit_scale}")
    return {"arch": model, "pretrained": pretrained, "weights_path": None, "weights_sha256": None,
            "embed_dim": int(cfg["embed_dim"]), "logit_scale": float(logit_scale), "logit_scale_source": source,
            "context_length": int((cfg.get("text_cfg") or {}).get("context_length", 77)), "declared": True}


def cached_hub_weights(arch: str, tag: str) -> Optional[str]:
    """The local file of an open_clip hub tag's weights when huggingface_hub's cache already holds
    it (nothing is downloaded), else None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        from .._compat import import_open_clip

        import_open_clip()
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
        from open_clip.pretrained import get_pretrained_cfg

        repo, name = os.path.split((get_pretrained_cfg(arch, tag) or {}).get("hf_hub", ""))
        for filename in ([name] if name else []) + [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]:
            found = try_to_load_from_cache(repo, filename) if repo else None
            if isinstance(found, str) and os.path.isfile(found):
                return found
    except Exception:  # noqa: BLE001 - no cache, no hub library, an unknown tag: nothing to read
        return None
    return None


def checkpoint_logit_scale(path: str) -> float:
    """exp(logit_scale) stored in a checkpoint file: a safetensors file is read without torch (only
    that tensor); ``.pt``/``.bin`` through ``torch.load(weights_only=True, mmap=True)``."""
    import numpy as np

    try:
        if str(path).endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="numpy") as f:
                name = next((k for k in f.keys() if k.split(".")[-1] == "logit_scale"), None)
                value = None if name is None else np.asarray(f.get_tensor(name), np.float64)
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else {}
            name = next((k for k in state if k.split(".")[-1] == "logit_scale"), None)
            value = None if name is None else state[name].float().numpy().astype(np.float64)
    except Exception as e:  # noqa: BLE001 - any reader failure is the file's
        raise ModelLoadError(f"cannot read the logit scale from {path} ({type(e).__name__}: {str(e)[:200]}); "
                             f"pass --logit-scale") from None
    if value is None or value.size != 1:
        raise ModelLoadError(f"{path} holds no logit_scale; pass --logit-scale")
    return float(np.exp(value.reshape(())))


def _packaged_config(arch: str) -> Optional[dict]:
    """open_clip's JSON config of ``arch`` read from its package folder, without importing open_clip
    (which imports torch: half a GB of RSS for a process that only reads embeddings)."""
    import importlib.util
    import json

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.origin or "/" in arch:
        return None
    path = Path(spec.origin).parent / "model_configs" / f"{arch}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def same_model(a: dict, b: dict) -> bool:
    """Whether two identities describe the same weights (sha256 when known, else arch+tag). A
    declared identity (embeddings imported from another tool) can only be checked for the embedding
    width and the logit scale (within 1 %)."""
    if a.get("declared") or b.get("declared"):
        known = all(x.get("logit_scale_source", "declared") != "assumed" for x in (a, b))
        return (a.get("embed_dim") == b.get("embed_dim")
                and (not known or math.isclose(float(a.get("logit_scale", 100.0)), float(b.get("logit_scale", 100.0)),
                                               rel_tol=0.01)))
    if a.get("weights_sha256") or b.get("weights_sha256"):
        return a.get("weights_sha256") == b.get("weights_sha256")
    keys = ("arch", "pretrained", "embed_dim") + (("seed",) if a.get("pretrained") == RANDOM else ())
    return all(a.get(k) == b.get(k) for k in keys)


def describe(identity: dict) -> str:
    w = identity.get("weights_path") or identity.get("pretrained") or "?"
    sha = identity.get("weights_sha256")
    if identity.get("declared"):
        how = {"checkpoint": "read from the checkpoint", "assumed": "assumed"}.get(
            identity.get("logit_scale_source", "declared"), "declared")
        return (f"{identity.get('arch')} [{w}] dim={identity.get('embed_dim')} logit scale "
                f"{float(identity.get('logit_scale', 100.0)):.1f} ({how} at import)")
    return f"{identity.get('arch')} [{w}{' sha256:' + sha[:12] if sha else ''}] dim={identity.get('embed_dim')}"


def load_recorded_model(identity: dict, device: str = "auto") -> ClipModel:
    """Load the model an index records in its manifest (its ``model`` identity)."""
    arch = identity.get("arch") or ""
    if arch.startswith("local-dir:"):
        return load_model(arch, device=device)
    return load_model(arch, identity.get("weights_path") or identity.get("pretrained"), device=device,
                      seed=identity.get("seed", 0))
