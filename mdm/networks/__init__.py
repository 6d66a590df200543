"""Networks: the transformer backbone (bidirectional denoiser or causal AR model)."""

from mdm.networks.transformer import Transformer, TransformerConfig

__all__ = ["Transformer", "TransformerConfig"]
