"""innerloop LMs as transformers models: ``AutoModelForCausalLM``, ``generate()``, ``save_pretrained``, ``Trainer``.

Needs ``transformers>=5`` (``pip install "innerloop[hf]"``); importing this package registers the ``innerloop`` model
type with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``. The rest of innerloop never imports it.
"""

try:
    import transformers
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError('innerloop.models.hf needs transformers>=5: pip install "innerloop[hf]"') from e
if int(transformers.__version__.split(".")[0]) < 5:  # pragma: no cover
    raise ImportError(f"innerloop.models.hf needs transformers>=5, found {transformers.__version__}: "
                      'pip install -U "innerloop[hf]"')

from .cache import InnerloopCache, InnerloopCacheLayer
from .configuration import InnerloopConfig
from .convert import export_hf, load_hf_as_causal_lm
from .modeling import InnerloopForCausalLM, InnerloopModel, InnerloopPreTrainedModel, register

register()

__all__ = [
    "InnerloopCache", "InnerloopCacheLayer", "InnerloopConfig", "InnerloopForCausalLM", "InnerloopModel",
    "InnerloopPreTrainedModel", "export_hf", "load_hf_as_causal_lm", "register",
]  # fmt: skip
