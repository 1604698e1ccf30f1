"""vLLM model classes that run a vidpress pre-LLM stage on each video's embeddings, one module per family.

They subclass vLLM's own model classes under the same architecture names (registered by
:func:`vidpress.integrations.vllm.register`, which imports each module only when vLLM asks for its class), so a
checkpoint loads exactly as in vLLM; with no ``vidpress`` entry in the model config they are vLLM's classes. Their
processors (:mod:`..processors`) give each video the declared count of placeholders of its method (the server's or
the request's) when the prompt is built, before the video is seen, and ``embed_multimodal`` returns exactly that
many embeddings per video (:func:`~vidpress.integrations.vllm.serving.compress_video`).

- :mod:`.llava_onevision`: frame tokens after vLLM's own projector and 2x2 pooling; positions renumbered.
- :mod:`.qwen2_5_vl`: kept tokens keep their original (t, h, w) M-RoPE ids.
- :mod:`.qwen3_vl`: vLLM's own path for pruned videos, DeepStack features merged as the tokens are.

Stages that score tokens by the vision encoder's attention (VisionZip, FastVID) get it from the tower through
hooks on its last attention, recomputed in fp32 and pooled like the features; vLLM's modules are untouched. A stage
that declares the only frames its plan can use (``encoded_frames``: uniform frame sampling) gets only those through
the tower, laid back on the full grid with zeros elsewhere; a plan keeping a skipped frame raises
(:func:`~vidpress.stages.check_encoded`).
"""
