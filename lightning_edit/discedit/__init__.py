"""DISCEDIT (Murti & Bhattacharyya, NeurIPS 2024): discriminative components from witness-function TV bounds.

Pipeline, each step a small pure-torch function: moments (:mod:`.moments`) -> witness bound
(:mod:`.witness`) -> score (:mod:`.scores`) -> selection and removal (:mod:`.structured`).
No Lightning import here; the callbacks in :mod:`lightning_edit.callbacks` are thin glue.
"""

from lightning_edit.discedit.moments import (
    ClassConditionalMoments,
    activation_transforms,
    check_targets,
    collect_moments,
    component_features,
    record_moments,
)
from lightning_edit.discedit.prune import (
    IMPORTANCES,
    SPARSITY_TYPES,
    TORCH_PRUNING_IMPORTANCES,
    PruneResult,
    channel_scores,
    max_sparsity,
    prune_channels,
    torch_pruning_scores,
)
from lightning_edit.discedit.select import (
    CANDIDATES,
    DEFAULT_CANDIDATES,
    SelectionReport,
    check_candidates,
    prune_with,
    select_and_prune,
    selection_accuracy,
)
from lightning_edit.discedit.recalibrate import batchnorm_layers, recalibrate_batchnorm
from lightning_edit.discedit.redundancy import channel_correlations, record_correlations, redundancy_adjusted_scores
from lightning_edit.discedit.scores import (
    WITNESS_FUNCTIONS,
    Witness,
    class_vs_rest_bounds,
    get_witness,
    l1_norm_scores,
    pruning_scores,
    random_scores,
    score_components,
    unlearning_scores,
)
from lightning_edit.discedit.structured import (
    PRUNING_KEY,
    ChannelGroup,
    apply_pruning,
    build_dependency_graph,
    channel_groups,
    count_macs_params,
    enable_edit_reload,
    group_scores,
    attention_shapes,
    head_dim,
    is_head_attention,
    prunable_layers,
    replay_pruning,
    select_channels,
)
from lightning_edit.discedit.prefix import PrefixReplay, prefix_modules
from lightning_edit.discedit.subset import check_classes, keep_classes, subset_batches
from lightning_edit.discedit.unlearn import (
    UnlearnReport,
    check_forget_classes,
    component_parameters,
    default_unlearning_layers,
    forget_retain_accuracy,
    mask_components,
    maskable_layers,
    mask_until_forgotten,
    masked_accuracies,
    record_prefix,
    refit_forget_rows,
    coupled_writers,
    expand_coupled,
    tie_coupled_scores,
    select_components,
    unlearn,
    unlearning_component_scores,
)
from lightning_edit.discedit.witness import (
    fisher_bound,
    generic_witness_bound,
    mpm_bound,
    regularise_covariance,
    robust_fisher_bound,
)

__all__ = [
    "UnlearnReport", "check_forget_classes", "component_parameters", "forget_retain_accuracy", "mask_components",
    "select_components", "unlearn", "unlearning_component_scores", "default_unlearning_layers", "mask_until_forgotten", "maskable_layers",
    "masked_accuracies", "coupled_writers", "expand_coupled", "tie_coupled_scores", "record_prefix", "refit_forget_rows",
    "PrefixReplay", "prefix_modules",
    "CANDIDATES", "DEFAULT_CANDIDATES", "SelectionReport", "check_candidates", "prune_with", "select_and_prune",
    "selection_accuracy", "IMPORTANCES", "SPARSITY_TYPES", "TORCH_PRUNING_IMPORTANCES", "PruneResult", "channel_scores", "max_sparsity", "prune_channels", "torch_pruning_scores",
    "activation_transforms", "batchnorm_layers", "recalibrate_batchnorm", "channel_correlations", "record_correlations",
    "redundancy_adjusted_scores",
    "ClassConditionalMoments", "check_targets", "collect_moments", "component_features", "record_moments",
    "WITNESS_FUNCTIONS", "Witness", "class_vs_rest_bounds", "get_witness", "l1_norm_scores", "pruning_scores",
    "random_scores", "score_components", "unlearning_scores", "PRUNING_KEY", "ChannelGroup", "apply_pruning", "build_dependency_graph",
    "channel_groups", "count_macs_params", "enable_edit_reload", "group_scores", "prunable_layers", "replay_pruning", "select_channels",
    "attention_shapes", "head_dim", "is_head_attention", "check_classes", "keep_classes", "subset_batches",
    "fisher_bound", "generic_witness_bound", "mpm_bound", "regularise_covariance", "robust_fisher_bound",
]
