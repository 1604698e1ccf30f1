"""METok frame-text relevance r_i (docs/methods.md): one small interface, three scorers.

=======================  ==========================================  =====================================
scorer                   signal                                      cost
=======================  ==========================================  =====================================
``EmbeddingRelevance``   question embedding vs frame's mean feature  negligible (default)
``SiglipRelevance``      a second full SigLIP, text vs image         one more vision-tower pass per frame
``DistinctRelevance``    no question: frame vs the video's mean      negligible (vLLM)
=======================  ==========================================  =====================================
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from ...errors import VidpressError
from ...tokens import VisualTokens


class FrameTextRelevance(Protocol):
    """Scores each frame's relevance to the question: ``(tokens, row, frames (F, D)) -> (F,)``.

    ``tokens`` is the stage's :class:`~vidpress.tokens.VisualTokens` (``text``, ``text_ids``, ``pixels`` are
    filled when :attr:`needs_pixels` asks for pixels), ``row`` the batch row, ``frames`` one embedding per frame.
    """

    needs_pixels: bool

    def __call__(self, tokens: VisualTokens, row: int, frames: Tensor) -> Tensor: ...


class EmbeddingRelevance:
    """Default relevance, no second vision model: cosine between the mean input embedding of the text after
    the video (the question, in the VLLM's own embedding space) and each frame's mean projected feature. With no
    text after the video, :class:`DistinctRelevance`.

    Cost: one (F x D) by (D) product, negligible next to the vision encoder.
    """

    needs_pixels = False

    def __call__(self, tokens: VisualTokens, row: int, frames: Tensor) -> Tensor:
        if tokens.text is None or tokens.text.shape[1] == 0:
            return DistinctRelevance()(tokens, row, frames)
        query = torch.nn.functional.normalize(tokens.text[row].float().mean(0), dim=-1)
        return torch.nn.functional.normalize(frames.float(), dim=-1) @ query


class DistinctRelevance:
    """Question-free relevance: 1 - cosine between each frame's mean projected feature and the video's mean frame,
    so the most distinctive frames rank first. For where no question reaches the stage: a serving engine encodes
    (and caches) a video apart from its prompt. Cost: negligible.
    """

    needs_pixels = False

    def __call__(self, tokens: VisualTokens, row: int, frames: Tensor) -> Tensor:
        x = torch.nn.functional.normalize(frames.float(), dim=-1)
        return 1 - x @ torch.nn.functional.normalize(x.mean(0), dim=-1)


class SiglipRelevance:
    """The reference's relevance: a second, full SigLIP (text + vision towers) scores every frame
    (docs/methods.md). The question text (decoded from the prompt after the video with the VLLM's
    ``tokenizer``) is tokenised by SigLIP's tokenizer, cut into ``chunk``-token pieces whose text features are
    max-pooled; r_i = cos(text, pooled image feature of frame i).

    Cost: the SigLIP vision tower runs once more over every frame (about the vision encoder's FLOPs again for
    so400m, which vidpress's accounting does not add to the LLM figures) plus the text tower per chunk.

    Parameters
    ----------
    path : str
        A local SigLIP checkpoint directory (or a hub id where the hub is reachable), e.g. the one named by
        the VLLM's vision tower (``google/siglip-so400m-patch14-384`` for LLaVA-OV). The VLLM's pixel values
        are reused, resized to SigLIP's input size when they differ.
    tokenizer : the VLLM's tokenizer (to recover the question text from the prompt ids).
    """

    needs_pixels = True

    def __init__(self, path: str, tokenizer: Any, chunk: int = 64):
        from transformers import AutoTokenizer, SiglipModel

        self.model = SiglipModel.from_pretrained(path).eval()
        self.siglip_tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer, self.chunk = tokenizer, chunk

    @torch.no_grad()
    def __call__(self, tokens: VisualTokens, row: int, frames: Tensor) -> Tensor:
        if tokens.pixels is None or tokens.text_ids is None:
            raise VidpressError("SiglipRelevance needs the video's pixel values and the prompt ids")
        text = self.tokenizer.decode(tokens.text_ids[row].tolist(), skip_special_tokens=True)
        ids = self.siglip_tokenizer(text, return_tensors="pt").input_ids[0]
        pad = self.siglip_tokenizer.pad_token_id or 0
        ids = torch.cat([ids, ids.new_full((-len(ids) % self.chunk,), pad)]).view(-1, self.chunk)
        param = next(self.model.parameters())
        text_features = self.model.get_text_features(input_ids=ids.to(param.device))
        text_features = getattr(text_features, "pooler_output", text_features).amax(0)
        pixels = tokens.pixels[row].to(param)
        size = self.model.config.vision_config.image_size
        if pixels.shape[-1] != size:
            pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear")
        image = self.model.get_image_features(pixel_values=pixels)
        image = getattr(image, "pooler_output", image)
        cos = torch.nn.functional.normalize(image.float(), dim=-1) @ torch.nn.functional.normalize(
            text_features.float(), dim=-1
        )
        return cos.to(frames.device)
