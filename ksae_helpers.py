"""Interpretable k-sparse autoencoders on Fashion-MNIST: everything the notebook calls.

The notebook's one import (``import ksae_helpers as kh``) and the table of contents of the ``ksae`` package:
this file only re-exports; the code lives in the modules below (imports run one way, bottom to top; the
contracts are in ``pyproject.toml``, checked by ``lint-imports``).

ksae.config                 ``Config``: every knob of the project, validated, saved inside every checkpoint; and the
                            constants it validates against.
ksae.parameters             The notebook's parameters (kind, range, default, meaning); ``check_parameters``.
ksae.runtime                Where code runs and how a notebook shows things: the device (chosen once), seeding,
                            ``show``, and the ``Stopwatch`` a run keeps its timings in.
ksae.data                   Offline Fashion-MNIST with SHA-256 checks, the validation split, image shapes.
ksae.sae                    The autoencoder kinds (one module each over the base that fixes the interface).
ksae.models                 The classifier on the sparse codes, and the end-to-end pipeline.
ksae.metrics                Codes of a dataset, reconstruction, firing frequency, predictions, the test evaluation.
ksae.cuda_graphs            A training step replayed as one captured CUDA graph (``GraphedStep``); eager elsewhere.
ksae.training               Adam, learning-rate schedules, classifier views, AuxK, and the two training loops.
ksae.checkpoints            Atomic checkpoint save, safe load, ``load_or_train``.
ksae.attribution            Integrated gradients, simple gradients, SmoothGrad, decoder-weighted, input x gradient;
                            ``attribute_all`` (both families: ksae.perturbation; shared door: ksae.attribution_base).
ksae.stats                  Row-wise rank correlations, bootstrap confidence intervals, Wilcoxon tests, partner
                            images (nulls).
ksae.selection              Which test images are explained: confident, correct, balanced per class (``Selection``).
ksae.checks.agreement       Agreement between methods, as the excess over a same-class different-image null.
ksae.checks.completeness    IG completeness along the straight path: gradient integral and the activation's jumps.
ksae.checks.substrates      What replaces removed pixels: zero, a blurred copy, or ROAD's noisy linear imputation.
ksae.checks.deletion        Deletion and insertion curves (MoRF, LeRF) under each substrate, the controls, object
                            focus.
ksae.checks.randomization   Cascading and independent model-parameter randomization (Adebayo et al. 2018).
ksae.checks.unit_causality  Unit-level causality: deleting code units in contribution order against random.
ksae.checks.verdicts        Pass/fail and ranks per ordering and test; what holds across substrates and seeds.
ksae.checks.suite           ``run_validation``: every check, timed.
ksae.units                  The unit atlas: statistics of every code unit (``unit_statistics``).
ksae.sweep                  The sparsity sweep: one model pair per k.
ksae.stability              Which units recur across training seeds: Hungarian matching of decoder atoms, encoder rows.
ksae.controls               Controls for the code: pixels, PCA, untrained and dense codes, shuffled labels (cached).
ksae.control_study          What sparsity buys: every control scored, explained, its unit claims (``run_controls``);
                            its generated markdown: ksae.controls_report (``controls_markdown``).
ksae.variant_study          Which SAE? every kind on one frontier, recurrence, planted atoms (``run_variants``); its
                            ksae.variant_models, ksae.variants_report, ksae.plots.variants; ksae.planted: known atoms.
ksae.checks.across_models   Checks comparing models on the same images; ksae.checks.sparseness: Gini, object share.
ksae.shortcut_study         A planted shortcut (``run_shortcut``): its data ksae.shortcuts, localisation scores
                            ksae.checks.localisation, text ksae.shortcut_report, figures ksae.plots.shortcut.
ksae.plots.style            Colours, sizes, fixed layouts and the seaborn style every figure is built in.
ksae.plots.figure           Finishing figures: palette PNGs, saving, and drawing figures side by side in forked
                            workers.
ksae.plots.training         Figures of the data, the training curves, the autoencoder and the classifier.
ksae.plots.maps             Attribution maps: one image (the three-row comparison) and many images (class averages,
                            agreement).
ksae.plots.checks           Figures of the faithfulness checks, randomization, unit deletion, object focus, the k
                            sweep.
ksae.plots.units            Figures of the unit atlas: firing density, dashboards, contribution against ablation.
ksae.plots.controls         Figures of the controls: models and their explanations; unit claims against controls.
ksae.report                 ``results/summary.json``, tables and generated markdown, run names and output folders,
                            notebook compaction; ksae.perturbation_report: the perturbation family's generated text.
ksae.unit_browser           The self-contained HTML unit browser (template in ``templates/unit_browser.html``).
ksae.explorer               The image explorer: the trained model live in one self-contained page (its template
                            ``templates/explorer.html``), a sibling of the unit browser, linked both ways.
ksae._util                  Validators shared by every module (one copy each), the image side, atomic writes,
                            JSON-safe values.

Not re-exported: ``ksae.docs``, a command (``python -m ksae.docs`` writes docs/ and README's findings from results/).

Shapes are written as ``x: [batch, 784]``; ``D`` is the input size (784), ``H`` the code size (1024),
``C`` the number of classes (10).
"""

from ksae.config import Config, DECAY_SCHEDULES, IG_METHODS, LR_SCHEDULES, SAE_KINDS, SAE_KNOBS
from ksae.parameters import check_parameter, check_parameters, MAX_K, NOTEBOOK_PARAMETERS, Parameter
from ksae.runtime import (
    device_name, pick_device, print_table, seed_everything, show, show_markdown, Stopwatch, synchronize,
)
from ksae.data import (
    as_flat_images, CLASS_NAMES, DatasetNotFoundError, FASHION_MNIST_SHA256, FashionMNIST, load_fashion_mnist,
    SYSTEM_DATA_DIR, train_subset, train_val_split, VAL_SPLIT_SEED, validation_indices,
)
from ksae.sae import (
    autoencoder_from_config, auxk_loss, BatchTopKAutoencoder, densify, firing_counts, fvu, JumpReLUAutoencoder,
    KSparseAutoencoder, MatryoshkaAutoencoder, PATH_TOPK_STRIDE, ReLUL1Autoencoder, SAE_CLASSES, SparseAutoencoder,
    TrainingContext, TrainingTerms,
)
from ksae.models import SparseCodeClassifier, SparseCodePipeline
from ksae.metrics import (
    dataset_fvu, encode_dataset, evaluate_autoencoder, evaluate_classifier, evaluate_models, firing_frequency, predict,
)
from ksae.cuda_graphs import CudaGraphBackend, graph_backend, GRAPH_WARMUP_STEPS, GraphedStep
from ksae.training import (
    autoencoder_step, classifier_step, classifier_views, CODE_MEMORY_BUDGET, encode_views, hflip, lr_factor, make_adam,
    make_scheduler, n_classifier_views, set_lr_, SHIFT_DIRECTIONS, shift_images, train_autoencoder,
    train_autoencoder_on_split, train_classifier, train_models, view_of, ViewCodes,
)
from ksae.checkpoints import (
    CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, load_or_train, RESCUE_PREFIX, save_checkpoint,
)
from ksae.attribution_base import DEFAULT_INTERNAL_BATCH, OUTPUTS
from ksae.perturbation import feature_ablation, kernel_shap, lime, occlusion, shapley_value_sampling, superpixel_grid
from ksae.attribution import (
    attribute_all, decoder_weighted, ig_quadrature, input_x_gradient, input_x_smoothgrad, integrated_gradients,
    METHOD_FAMILIES, METHOD_LABELS, rescale_contributions, RESCALE_EPS, simple_gradients, smoothgrad, UNIT_RULES,
)
from ksae.stats import (
    BOOTSTRAP_CACHE, bootstrap_ci, bootstrap_estimates, partner_images, percentile_interval, rowwise_spearman,
    summarize, top_fraction_iou,
)
from ksae.selection import select_high_confidence, Selection
from ksae.checks.agreement import (
    AGREEMENT_KINDS, correlation_matrix, cross_method_statistics, family_agreement, PIXEL_SETS,
)
from ksae.checks.completeness import (
    completeness_decomposition, COMPLETENESS_POINTS, COMPLETENESS_TOLERANCE, count_path_switches, GAP_FLOOR,
    ig_completeness, MIN_COMPLETENESS_POINTS, MIN_SUBGRID_STEPS,
)
from ksae.checks.substrates import (
    blur_images, BLUR_SIGMA, BLUR_TRUNCATE, FAITH_ALPHA, FAITH_ROWS, RANKINGS, ROAD_CHECK_EVERY_CUDA, ROAD_CHUNK,
    ROAD_CHUNK_CUDA, ROAD_COMPACT, ROAD_DIAGONAL_WEIGHT, ROAD_DIRECT_WEIGHT, ROAD_GRID, road_impute, ROAD_MAX_ITER,
    ROAD_NOISE, ROAD_PIXELS_PER_STEP, ROAD_TOL, SUBSTRATES,
)
from ksae.checks.deletion import (
    balanced_subset, control_maps, curve_auc, edge_map, faithfulness_orderings, faithfulness_suite, object_focus,
    perturbation_curves, removal_curves, removal_order,
)
from ksae.checks.randomization import (
    DECODER_STAGE, randomization_check, RANDOMIZATION_SEED_OFFSET, randomization_stages, RANDOMIZATION_VARIANTS,
    READS_DECODER,
)
from ksae.checks.unit_causality import unit_deletion_curves, UNIT_ORDERS, UNIT_SCORES, Z_95
from ksae.checks.verdicts import VERDICT_FAMILIES, VERDICT_NAMES, verdict_statements, verdict_table, VERDICT_TESTS
from ksae.checks.suite import run_validation, timed_checks
from ksae.units import (
    contribution_ablation_agreement, describe_unit, top_units_of_classes, UNIT_ABLATION_ROWS, unit_ablation_sums,
    UNIT_BAND_SAMPLES, UNIT_COFIRING, UNIT_CONTRIBUTION_ROWS, unit_contribution_sums, UNIT_HIST_BINS,
    UNIT_NEGLIGIBLE_LOGIT, UNIT_QUANTILE_BANDS, unit_statistics, unit_table, UNIT_TABLE_DIGITS, UNIT_TOP_IMAGES,
    UnitStats, EXPLORER_PAGE, UNIT_BROWSER_PAGE, UNIT_TOP_CONTRIBUTIONS, unit_top_contributions,
)
from ksae.sweep import run_k_sweep
from ksae.planted import planted_dictionary, PLANTED_COHERENCES, PlantedDictionary, random_image_atoms, recovery_scores
from ksae.stability import (
    compare_stability, match_atoms, run_seed_stability, seed_dictionaries, seed_stability, stability_for_config,
    STABILITY_BOOTSTRAP, STABLE_COSINE, stability_by_group, unit_groups, untrained_atoms, recurrence,
)
from ksae.controls import (
    fit_pca, LinearCode, LinearCodePipeline, REPRESENTATIONS, train_representation, untrained_autoencoder,
)
from ksae.checks.sparseness import gini_index, object_share
from ksae.checks.across_models import cascading_randomization, faithfulness_gaps, unit_deletion_gaps
from ksae.control_study import common_images, run_controls, unit_claims, unit_measures
from ksae.shortcuts import Marker, plant_shortcut, SHORTCUT_VARIANTS, ShortcutData
from ksae.checks.localisation import chance_level, pointing_game, relevance_mass_accuracy, relevance_rank_accuracy
from ksae.shortcut_study import run_shortcut
from ksae.variant_study import run_variants
from ksae.plots.style import (
    AGREEMENT_LAYOUT, ATLAS_COLUMNS, ATLAS_HISTOGRAM_INCHES, CAN_FORK, CI_ALPHA, COLORBAR_INSET, COMPARISON_MARGINS,
    COMPARISON_MIN_WIDTH, COMPLETENESS_LAYOUT, COMPLETENESS_SWEEP_LAYOUT, CONFUSION_CMAP, CONFUSION_LAYOUT, CONTEXT,
    CONTROL_LABELS, CONTROL_STYLES, CORRELATION_LAYOUT, DENSITY_LAYOUT, DIVERGING_CMAP, DPI, ERROR_BINS,
    FAITHFULNESS_LAYOUT, FALLBACK_NOTE, FIGURE_WORKERS, FONT_SCALE, HEATMAP_DARK, IMAGE_CMAP, IMAGE_STATS,
    K_SWEEP_LAYOUT, K_SWEEP_PANELS, LEGEND_HEADROOM, LOG_BAR_MARGIN, LOG_BIN_MARGIN, LOG_FLOOR, LOG_MINOR_SUBS,
    MAP_CLIP_PERCENTILE, MESSAGE_LAYOUT, METHOD_COLORS, MOSAIC_GAP, MOSAIC_TITLE_GAP, NULL_CORRELATIONS,
    OBJECT_CONTOUR_COLOR, OBJECT_FOCUS_LAYOUT, OVERLAY_ALPHA, PAIR_CORRELATIONS, PANEL_INCHES, PNG_COLORS,
    PNG_COMPRESS_LEVEL, PNG_EXACT_COLORS, PNG_QUANTIZER, PNG_TOLERANCE, QUADRATURE_LABELS, RANDOMIZATION_LAYOUT,
    RANDOMIZATION_ROW_INCHES, RC_FAST, SHORT_LABELS, SIDE_COLORBAR_INCHES, SMALL_PANEL_INCHES, STYLE, SUPTITLE_PAD,
    TRAINING_LAYOUT, UNIT_DELETION_LAYOUT, USAGE_BINS, FAMILY_GROUP_COLORS, FAMILY_LAYOUT,
)
from ksae.plots.figure import figure_workers, palette_png, png_bytes, render_figures
from ksae.plots.training import (
    plot_class_examples, plot_class_units, plot_confusion_matrix, plot_feature_atlas, plot_reconstructions,
    plot_training_history,
)
from ksae.plots.maps import (
    image_attribution_stats, plot_attribution_comparison, plot_class_average_maps, plot_comparison_grid,
    plot_correlation_summary, plot_family_agreement, plot_perturbation_maps, render_comparison_grid,
)
from ksae.plots.checks import (
    ABS_HATCH, FAITH_CURVE_TITLES, plot_completeness, plot_faithfulness, plot_k_sweep, plot_object_focus,
    plot_randomization, plot_unit_deletion, SUBSTRATE_LABELS, UNIT_ORDER_LABELS, UNIT_ORDER_STYLES,
)
from ksae.plots.units import (
    DASHBOARD_ROW_INCHES, DASHBOARD_TOP_COLUMNS, DENSITY_BINS, MOSAIC_GAP_COLOR, plot_contribution_vs_ablation,
    plot_firing_density, plot_unit_dashboard,
)
from ksae.plots.controls import plot_controls_models, plot_controls_units
from ksae.controls_report import controls_markdown
from ksae.perturbation_report import perturbation_markdown
from ksae.plots.shortcut import plot_shortcut_localisation, plot_shortcut_maps, plot_shortcut_removal
from ksae.shortcut_report import shortcut_markdown
from ksae.plots.variants import plot_variants_frontier, plot_variants_recovery, plot_variants_stability
from ksae.variants_report import variants_markdown
from ksae.report import (
    build_summary, compact_notebook, DEFAULT_FIGURE_DIR, DEFAULT_SUMMARY_PATH, figure_path_fn, figure_timings,
    headline_table, output_paths, protected_folders, randomization_table, read_summary, RUN_DEFAULTS, run_name,
    RUN_NAME_MAX, RUNS_DIR, seeds_for_config, selection_summary, SUMMARY_SCHEMA_VERSION, UNIT_PURE, unit_table_summary,
    verdict_markdown, write_summary,
)
from ksae.unit_browser import (
    read_unit_browser_data, SIGNED_TILE_ZERO, unit_browser_data, UNIT_BROWSER_TEMPLATE, write_unit_browser,
)
from ksae.explorer import (
    EXPLORER_DTYPES, EXPLORER_GZIP_LEVEL, EXPLORER_MAX_BYTES, EXPLORER_MAX_SCALE, EXPLORER_TEMPLATE, explorer_data,
    explorer_reference, read_explorer_data, write_explorer,
)
from ksae._util import atomic_write_bytes, IMAGE_SIDE, PIXEL_TOLERANCE, remove_stale_temporaries, STALE_TMP_SECONDS

__all__ = [
    "Config", "DECAY_SCHEDULES", "IG_METHODS", "LR_SCHEDULES", "SAE_KINDS", "SAE_KNOBS", "SAE_CLASSES", "FAMILY_LAYOUT",
    "SparseAutoencoder", "autoencoder_from_config", "BatchTopKAutoencoder", "JumpReLUAutoencoder", "ReLUL1Autoencoder",
    "MatryoshkaAutoencoder", "TrainingContext", "TrainingTerms", "check_parameter", "check_parameters", "MAX_K", "lime",
    "NOTEBOOK_PARAMETERS", "Parameter", "PIXEL_TOLERANCE", "remove_stale_temporaries", "STALE_TMP_SECONDS", "occlusion",
    "RESCUE_PREFIX", "protected_folders", "device_name", "pick_device", "print_table", "seed_everything", "show",
    "show_markdown", "Stopwatch", "synchronize", "as_flat_images", "CLASS_NAMES", "DatasetNotFoundError", "kernel_shap",
    "FASHION_MNIST_SHA256", "FashionMNIST", "load_fashion_mnist", "SYSTEM_DATA_DIR", "train_subset", "train_val_split",
    "VAL_SPLIT_SEED", "validation_indices", "densify", "KSparseAutoencoder", "SparseCodeClassifier", "feature_ablation",
    "SparseCodePipeline", "dataset_fvu", "encode_dataset", "evaluate_autoencoder", "evaluate_classifier",
    "evaluate_models", "firing_counts", "firing_frequency", "fvu", "predict", "CudaGraphBackend", "graph_backend",
    "GRAPH_WARMUP_STEPS", "GraphedStep", "autoencoder_step", "auxk_loss", "classifier_step", "classifier_views",
    "CODE_MEMORY_BUDGET", "encode_views", "hflip", "lr_factor", "make_adam", "make_scheduler", "n_classifier_views",
    "set_lr_", "SHIFT_DIRECTIONS", "shift_images", "train_autoencoder", "train_autoencoder_on_split", "superpixel_grid",
    "train_classifier", "train_models", "view_of", "ViewCodes", "CHECKPOINT_FORMAT", "CheckpointError",
    "load_checkpoint", "load_or_train", "save_checkpoint", "attribute_all", "decoder_weighted", "plot_family_agreement",
    "DEFAULT_INTERNAL_BATCH", "ig_quadrature", "input_x_gradient", "input_x_smoothgrad", "integrated_gradients",
    "METHOD_LABELS", "OUTPUTS", "rescale_contributions", "RESCALE_EPS", "simple_gradients", "smoothgrad", "UNIT_RULES",
    "BOOTSTRAP_CACHE", "bootstrap_ci", "bootstrap_estimates", "percentile_interval", "partner_images",
    "rowwise_spearman", "summarize", "top_fraction_iou", "select_high_confidence", "Selection", "AGREEMENT_KINDS",
    "correlation_matrix", "cross_method_statistics", "PIXEL_SETS", "completeness_decomposition", "COMPLETENESS_POINTS",
    "COMPLETENESS_TOLERANCE", "count_path_switches", "GAP_FLOOR", "ig_completeness", "MIN_COMPLETENESS_POINTS",
    "MIN_SUBGRID_STEPS", "PATH_TOPK_STRIDE", "blur_images", "BLUR_SIGMA", "BLUR_TRUNCATE", "FAITH_ALPHA", "FAITH_ROWS",
    "RANKINGS", "ROAD_CHECK_EVERY_CUDA", "ROAD_CHUNK", "ROAD_CHUNK_CUDA", "ROAD_COMPACT", "ROAD_DIAGONAL_WEIGHT",
    "ROAD_DIRECT_WEIGHT", "ROAD_GRID", "road_impute", "ROAD_MAX_ITER", "ROAD_NOISE", "ROAD_PIXELS_PER_STEP", "ROAD_TOL",
    "SUBSTRATES", "balanced_subset", "control_maps", "curve_auc", "edge_map", "faithfulness_orderings",
    "faithfulness_suite", "object_focus", "perturbation_curves", "removal_curves", "removal_order", "DECODER_STAGE",
    "randomization_check", "RANDOMIZATION_SEED_OFFSET", "randomization_stages", "RANDOMIZATION_VARIANTS",
    "READS_DECODER", "unit_deletion_curves", "UNIT_ORDERS", "UNIT_SCORES", "Z_95", "VERDICT_FAMILIES", "VERDICT_NAMES",
    "verdict_statements", "verdict_table", "VERDICT_TESTS", "run_validation", "timed_checks", "shapley_value_sampling",
    "contribution_ablation_agreement", "describe_unit", "top_units_of_classes", "UNIT_ABLATION_ROWS", "METHOD_FAMILIES",
    "unit_ablation_sums", "UNIT_BAND_SAMPLES", "UNIT_COFIRING", "UNIT_CONTRIBUTION_ROWS", "unit_contribution_sums",
    "UNIT_HIST_BINS", "UNIT_NEGLIGIBLE_LOGIT", "UNIT_QUANTILE_BANDS", "unit_statistics", "unit_table",
    "UNIT_TABLE_DIGITS", "UNIT_TOP_IMAGES", "UnitStats", "compare_stability", "match_atoms", "run_seed_stability",
    "seed_dictionaries", "seed_stability", "stability_for_config", "STABILITY_BOOTSTRAP", "STABLE_COSINE",
    "stability_by_group", "unit_groups", "untrained_atoms", "run_k_sweep", "fit_pca", "LinearCode", "family_agreement",
    "LinearCodePipeline", "REPRESENTATIONS", "train_representation", "untrained_autoencoder", "gini_index",
    "object_share", "cascading_randomization", "faithfulness_gaps", "unit_deletion_gaps", "common_images",
    "run_controls", "unit_claims", "unit_measures", "plot_controls_models", "plot_controls_units", "controls_markdown",
    "AGREEMENT_LAYOUT", "ATLAS_COLUMNS", "ATLAS_HISTOGRAM_INCHES", "CAN_FORK", "CI_ALPHA", "COLORBAR_INSET",
    "COMPARISON_MARGINS", "COMPARISON_MIN_WIDTH", "COMPLETENESS_LAYOUT", "COMPLETENESS_SWEEP_LAYOUT", "CONFUSION_CMAP",
    "CONFUSION_LAYOUT", "CONTEXT", "CONTROL_LABELS", "CONTROL_STYLES", "CORRELATION_LAYOUT", "DENSITY_LAYOUT",
    "DIVERGING_CMAP", "DPI", "ERROR_BINS", "FAITHFULNESS_LAYOUT", "FALLBACK_NOTE", "FIGURE_WORKERS", "FONT_SCALE",
    "HEATMAP_DARK", "IMAGE_CMAP", "IMAGE_STATS", "K_SWEEP_LAYOUT", "K_SWEEP_PANELS", "LEGEND_HEADROOM",
    "LOG_BAR_MARGIN", "LOG_BIN_MARGIN", "LOG_FLOOR", "LOG_MINOR_SUBS", "MAP_CLIP_PERCENTILE", "MESSAGE_LAYOUT",
    "METHOD_COLORS", "MOSAIC_GAP", "MOSAIC_TITLE_GAP", "NULL_CORRELATIONS", "OBJECT_CONTOUR_COLOR",
    "OBJECT_FOCUS_LAYOUT", "OVERLAY_ALPHA", "PAIR_CORRELATIONS", "PANEL_INCHES", "PNG_COLORS", "PNG_COMPRESS_LEVEL",
    "PNG_EXACT_COLORS", "PNG_QUANTIZER", "PNG_TOLERANCE", "QUADRATURE_LABELS", "RANDOMIZATION_LAYOUT",
    "RANDOMIZATION_ROW_INCHES", "RC_FAST", "SHORT_LABELS", "SIDE_COLORBAR_INCHES", "SMALL_PANEL_INCHES", "STYLE",
    "SUPTITLE_PAD", "TRAINING_LAYOUT", "UNIT_DELETION_LAYOUT", "USAGE_BINS", "figure_workers", "palette_png",
    "png_bytes", "render_figures", "plot_class_examples", "plot_class_units", "plot_confusion_matrix",
    "plot_feature_atlas", "plot_reconstructions", "plot_training_history", "image_attribution_stats",
    "plot_attribution_comparison", "plot_class_average_maps", "plot_comparison_grid", "plot_correlation_summary",
    "render_comparison_grid", "ABS_HATCH", "FAITH_CURVE_TITLES", "plot_completeness", "plot_faithfulness",
    "plot_k_sweep", "plot_object_focus", "plot_randomization", "plot_unit_deletion", "SUBSTRATE_LABELS",
    "UNIT_ORDER_LABELS", "UNIT_ORDER_STYLES", "DASHBOARD_ROW_INCHES", "DASHBOARD_TOP_COLUMNS", "DENSITY_BINS",
    "MOSAIC_GAP_COLOR", "plot_contribution_vs_ablation", "plot_firing_density", "plot_unit_dashboard", "build_summary",
    "compact_notebook", "DEFAULT_FIGURE_DIR", "DEFAULT_SUMMARY_PATH", "figure_path_fn", "figure_timings",
    "headline_table", "output_paths", "randomization_table", "read_summary", "RUN_DEFAULTS", "run_name", "RUN_NAME_MAX",
    "RUNS_DIR", "seeds_for_config", "selection_summary", "SUMMARY_SCHEMA_VERSION", "UNIT_PURE", "unit_table_summary",
    "verdict_markdown", "write_summary", "read_unit_browser_data", "SIGNED_TILE_ZERO", "unit_browser_data",
    "UNIT_BROWSER_TEMPLATE", "write_unit_browser", "EXPLORER_PAGE", "UNIT_BROWSER_PAGE", "UNIT_TOP_CONTRIBUTIONS",
    "unit_top_contributions", "EXPLORER_DTYPES", "EXPLORER_GZIP_LEVEL", "EXPLORER_MAX_BYTES", "EXPLORER_MAX_SCALE",
    "EXPLORER_TEMPLATE", "explorer_data", "explorer_reference", "read_explorer_data", "write_explorer",
    "atomic_write_bytes", "IMAGE_SIDE", "plot_perturbation_maps", "perturbation_markdown", "FAMILY_GROUP_COLORS",
    "Marker", "plant_shortcut", "SHORTCUT_VARIANTS", "ShortcutData", "chance_level", "pointing_game",
    "relevance_mass_accuracy", "relevance_rank_accuracy", "run_shortcut", "plot_shortcut_localisation",
    "plot_shortcut_maps", "plot_shortcut_removal", "shortcut_markdown",
    "planted_dictionary", "PLANTED_COHERENCES", "PlantedDictionary",
    "random_image_atoms", "recovery_scores", "recurrence", "run_variants", "plot_variants_frontier",
    "plot_variants_recovery", "plot_variants_stability", "variants_markdown",
]
