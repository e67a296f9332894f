"""torchvision compatibility shim.

On machines where pip pairs a CPU build of torch with a CUDA build of
torchvision, ``import torchvision`` (and so ``import open_clip``) fails with
``operator torchvision::nms does not exist``: the wheel's Python side
registers fake kernels for ops its C++ library never declared. Declaring the
two op schemas first lets the import succeed (nothing here uses them). Where
torchvision's own library loads, the ops already exist and this is a no-op.
"""
from __future__ import annotations

_DONE = False
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBS: list = []  # keep the Library objects alive: dropping them undoes the definitions


def _op_exists(name: str) -> bool:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def ensure_torchvision() -> None:
    """Make ``import torchvision`` work next to a mismatched torch build (idempotent)."""
    global _DONE
    if _DONE:
        return
    import importlib.util

    import torch

    if importlib.util.find_spec("torchvision") is not None:
        missing = [n for n in _SCHEMAS if not _op_exists(n)]
        if missing:
            try:  # a matching torchvision registers the ops when its extension loads
                import torchvision.extension  # noqa: F401
            except Exception:
                pass
            missing = [n for n in missing if not _op_exists(n)]
        if missing:
            lib = torch.library.Library("torchvision", "FRAGMENT")
            for name in missing:
                lib.define(_SCHEMAS[name])
            _LIBS.append(lib)
    _DONE = True


def import_open_clip():
    """Import open_clip after the torchvision shim."""
    ensure_torchvision()
    import open_clip

    return open_clip
