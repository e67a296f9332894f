"""Build a model without its random initialisation when a checkpoint will overwrite every weight.

open_clip builds the model (each layer initialised at random: ``torch.nn.init``), then loads the
checkpoint into it with ``strict=True``: every parameter and persistent buffer is replaced, so the
initialisation is thrown away. It is most of the model's construction time: ViT-B-32 0.8-1.0 s,
ViT-L-14 ~2 s on a 2-core CPU (measured: ``open_clip.create_model`` 0.99-1.32 vs 0.16-0.27 s and
2.42-2.48 vs 0.46-0.53 s). ``skipped_init`` turns ``torch.nn.init``'s in-place initialisers into
no-ops while the model is built (what transformers' ``no_init_weights`` does for its models), and
the caller passes open_clip ``require_pretrained=True``: if no full checkpoint loaded, open_clip
raises instead of returning a model of uninitialised memory. Initialisers called another way (a
tensor's own ``normal_``, timm's ``trunc_normal_``) still run; the load overwrites them too.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

# torch.nn.init's in-place initialisers (those the installed torch has are replaced)
INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                "sparse_")
_LOCK = threading.Lock()   # model builds one at a time, patched or not: the functions are module-wide


def _keep(tensor, *args, **kwargs):
    """An initialiser that leaves ``tensor`` as it is."""
    return tensor


@contextlib.contextmanager
def skipped_init(skip: bool = True) -> Iterator[None]:
    """``torch.nn.init``'s initialisers as no-ops inside the block (``skip=False``: unchanged),
    restored on the way out, whatever happened inside. Either way the block holds one lock, so a
    model that must be initialised is never built while another thread has them switched off."""
    import torch.nn.init as init

    with _LOCK:
        if not skip:
            yield
            return
        saved = {name: getattr(init, name) for name in INITIALISERS if hasattr(init, name)}
        try:
            for name in saved:
                setattr(init, name, _keep)
            yield
        finally:
            for name, fn in saved.items():
                setattr(init, name, fn)
