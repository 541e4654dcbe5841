"""Models: per-modality encoders, fusion modules, the multimodal model and losses."""
from mmlib.models.encoders import (
    DEFAULT_ARCH,
    ENCODER_ARCHS,
    EmbeddingMLP,
    ImageCNN,
    TabularMLP,
    TextBagOfWords,
    TextGRU,
    BiTextGRU,
    PretrainedTextEncoder,
    build_encoder,
    default_arch,
)
from mmlib.models.fusion import (
    FUSIONS,
    AttentionFusion,
    BilinearFusion,
    EarlyFusion,
    Fusion,
    GatedFusion,
    LateFusion,
    LearnedWeightFusion,
    LowRankTensorFusion,
    MoEFusion,
)
from mmlib.models.losses import cosine_loss, info_nce
from mmlib.models.model import MultimodalModel, build_model, build_model_from_config

__all__ = [
    "DEFAULT_ARCH", "ENCODER_ARCHS", "EmbeddingMLP", "ImageCNN", "TabularMLP", "TextBagOfWords", "TextGRU", "BiTextGRU",
    "PretrainedTextEncoder", "build_encoder", "default_arch",
    "FUSIONS", "Fusion", "EarlyFusion", "LateFusion", "LearnedWeightFusion", "GatedFusion", "AttentionFusion",
    "LowRankTensorFusion", "BilinearFusion", "MoEFusion",
    "MultimodalModel", "build_model", "build_model_from_config",
    "info_nce", "cosine_loss",
]
