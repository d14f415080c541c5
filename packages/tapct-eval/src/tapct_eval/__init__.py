"""tapct_eval: frozen-feature evaluation of 3D encoders (TAP-CT paper section 3.3, App. C).

Needs only the backbone interface (``.patch_size``, ``.embed_dim``, DINOv2's
``forward_features`` or ``get_intermediate_layers``) or the encoder protocol of
:mod:`tapct_eval.encoders` (timm 2D models slice by slice, MONAI encoders, any callable),
so any encoder can be benchmarked.
"""

from .abmil import ABMIL, ABMILTrainingConfig, predict_abmil, train_abmil
from .encoders import Encoder, EncoderOutput, Preprocessing, as_encoder, create_encoder
from .features import ExtractedFeatures, FeatureExtractor, extract_features
from .figures import (
    pca_rgb,
    plot_localisation,
    plot_pca_planes,
    plot_prediction_scatter,
    plot_retrieval_heatmap,
    plot_roc_curves,
    plot_segmentation_overlay,
)
from .kinds import TASK_KINDS, CasePrediction, KindContext, Scan, TaskKind
from .label_checks import (
    LabelCoverWarning,
    LabelError,
    LabelOverlap,
    check_label_image,
    image_like_problem,
    label_overlap,
    prepare_label,
)
from .labels import (
    TOTALSEGMENTATOR_49_CLASSES,
    TOTALSEGMENTATOR_V2_CLASSES,
    TOTALSEGMENTATOR_V2_TO_49,
    merge_totalsegmentator_labels,
    remap_labels,
)
from .loading import ClipStats, IntensityStats, clip_normalize, load_image_monai, load_label_monai
from .metrics import (
    FoldSummary,
    UndefinedMetricWarning,
    auc_score,
    dice_per_class,
    macro_dice,
    micro_average_precision,
    multilabel_micro_auc,
    summarize_folds,
)
from .retrieval import RetrievalResult, masked_patch_features, retrieve_patches
from .runner import BenchmarkResults, run_benchmark, write_results
from .segmentation import (
    LinearSegmentationProbe,
    ProbeTrainingConfig,
    evaluate_segmentation,
    predict_segmentation,
    train_segmentation_probe,
)
from .task import (
    BenchmarkCase,
    BenchmarkTask,
    CaseError,
    ClassificationCase,
    LocalisationCase,
    RegressionCase,
    RetrievalCase,
    SegmentationCase,
    SurvivalCase,
    TaskFileError,
    first_dot_stem,
    load_task,
)

__all__ = [
    "ABMIL",
    "TASK_KINDS",
    "TOTALSEGMENTATOR_49_CLASSES",
    "TOTALSEGMENTATOR_V2_CLASSES",
    "TOTALSEGMENTATOR_V2_TO_49",
    "ABMILTrainingConfig",
    "BenchmarkCase",
    "BenchmarkResults",
    "BenchmarkTask",
    "CaseError",
    "CasePrediction",
    "ClassificationCase",
    "ClipStats",
    "Encoder",
    "EncoderOutput",
    "ExtractedFeatures",
    "FeatureExtractor",
    "FoldSummary",
    "IntensityStats",
    "KindContext",
    "LabelCoverWarning",
    "LabelError",
    "LabelOverlap",
    "LinearSegmentationProbe",
    "LocalisationCase",
    "Preprocessing",
    "ProbeTrainingConfig",
    "RegressionCase",
    "RetrievalCase",
    "RetrievalResult",
    "Scan",
    "SegmentationCase",
    "SurvivalCase",
    "TaskFileError",
    "TaskKind",
    "UndefinedMetricWarning",
    "as_encoder",
    "auc_score",
    "check_label_image",
    "clip_normalize",
    "create_encoder",
    "dice_per_class",
    "evaluate_segmentation",
    "extract_features",
    "first_dot_stem",
    "image_like_problem",
    "label_overlap",
    "load_image_monai",
    "load_label_monai",
    "load_task",
    "macro_dice",
    "masked_patch_features",
    "merge_totalsegmentator_labels",
    "micro_average_precision",
    "multilabel_micro_auc",
    "pca_rgb",
    "plot_localisation",
    "plot_pca_planes",
    "plot_prediction_scatter",
    "plot_retrieval_heatmap",
    "plot_roc_curves",
    "plot_segmentation_overlay",
    "predict_abmil",
    "predict_segmentation",
    "prepare_label",
    "remap_labels",
    "retrieve_patches",
    "run_benchmark",
    "summarize_folds",
    "train_abmil",
    "train_segmentation_probe",
    "write_results",
]
