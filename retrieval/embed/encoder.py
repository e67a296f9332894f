"""Encode preprocessed images and tokenized texts to L2-normalised numpy arrays (or raw ones, for
methods such as ComCLIP that use the embeddings' norms)."""
from __future__ import annotations

import numpy as np
import torch


class Encoder:
    """Encode preprocessed image batches and token batches to L2-normalised numpy arrays."""

    def __init__(self, clip, trim_text: bool = True):
        self.clip = clip
        if trim_text and not hasattr(clip, "_trim_exact"):  # checked once per loaded model
            clip._trim_exact = self._trimming_is_exact()
        self.trim_text = trim_text and clip._trim_exact

    def _trimming_is_exact(self) -> bool:
        """Use the cut-context text path only if it matches ``encode_text`` on this model."""
        from .text_fast import encode_text_trimmed, supports_trimming

        if not supports_trimming(self.clip.model):
            return False
        probe = self.clip.tokenizer(["a dog.", "two children play football on a wide green field near a river ."])
        with torch.inference_mode():
            probe = probe.to(self.clip.device)
            ref = torch.nn.functional.normalize(self.clip.model.encode_text(probe).float(), dim=-1)
            got = torch.nn.functional.normalize(encode_text_trimmed(self.clip.model, probe).float(), dim=-1)
        tol = 1e-4 if self.clip.dtype == torch.float32 else 5e-3
        return bool((ref - got).abs().max() <= tol)

    def _run(self, fn, x, normalise: bool = True) -> np.ndarray:
        with torch.inference_mode():
            y = fn(x.to(self.clip.device)).float()
            if normalise:
                y = torch.nn.functional.normalize(y, dim=-1)
        return y.cpu().numpy()

    def images(self, images, normalise: bool = True) -> np.ndarray:
        return self._run(lambda x: self.clip.model.encode_image(x.to(self.clip.dtype)), images, normalise)

    def tokens(self, tokens, normalise: bool = True) -> np.ndarray:
        if self.trim_text:
            from .text_fast import encode_text_trimmed

            return self._run(lambda t: encode_text_trimmed(self.clip.model, t), tokens, normalise)
        return self._run(self.clip.model.encode_text, tokens, normalise)

    def texts(self, texts: list[str], normalise: bool = True) -> np.ndarray:
        return self.tokens(self.clip.tokenizer(texts), normalise)
