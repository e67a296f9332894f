"""Exact, cheaper text encoding for open_clip's causal CLIP text tower.

open_clip's ``CLIP.encode_text`` always runs the full context (77 tokens), although captions are
mostly 10-25 tokens followed by padding. With a causal attention mask, outputs at position i depend
only on tokens <= i, and the pooled feature is taken at the EOT (argmax) position, so trailing pads
can be cut without changing the result. Sorting a batch by length and encoding groups each cut to
their own longest caption saves most of the text tower's work. ``supports_trimming`` guards the
assumption; :class:`retrieval.embed.Encoder` also checks the result against ``encode_text`` once.
"""
from __future__ import annotations

GROUP = 16  # captions per length group


def supports_trimming(model) -> bool:
    """Whether ``model`` is a plain open_clip CLIP with a causal text mask and position-based pooling."""
    from .._compat import import_open_clip

    open_clip = import_open_clip()
    if type(model) is not open_clip.CLIP:
        return False
    mask = getattr(model, "attn_mask", None)
    if mask is None or mask.dim() != 2:
        return False
    import torch

    upper = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    causal = bool(torch.isneginf(mask[upper]).all() and (mask[~upper] == 0).all())
    return causal and getattr(model, "text_pool_type", None) in ("argmax", "eos", "first")


def _encode_cut(model, tokens):
    import torch.nn as nn

    from .._compat import import_open_clip

    text_global_pool = import_open_clip().transformer.text_global_pool
    n = int((tokens != 0).long().cumsum(1).argmax(1).max().item()) + 1  # last non-pad position + 1
    t = tokens[:, :n]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(t).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = text_global_pool(x, t, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return x


def encode_text_trimmed(model, tokens, group: int = GROUP):
    """Same as ``model.encode_text(tokens)`` (unnormalised) at a fraction of the cost."""
    import torch

    lengths = (tokens != 0).long().sum(1)
    order = torch.argsort(lengths)
    out = [(_encode_cut(model, tokens[order[i:i + group]])) for i in range(0, len(order), group)]
    feats = torch.cat(out)
    result = torch.empty_like(feats)
    result[order] = feats
    return result
