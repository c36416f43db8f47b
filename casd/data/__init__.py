"""Data: MMSA feature pickles, the synthetic data set, missingness protocols, torch batches."""
from casd.data.loader import BATCH_KEYS, SplitDataset, batch_to, batches_from_split, make_loader
from casd.data.missing import (FRAME_RATES, UNK_ID, EvalCondition, TrainingMissingness,
                               apply_condition, draw_kept_modalities, evaluation_conditions,
                               frame_missing, modality_missing)
from casd.data.mmsa import SPLITS, Split, load_mmsa, split_from_mmsa
from casd.data.safe_pickle import UnsafePickleError, restricted_load
from casd.data.synthetic import SyntheticConfig, generate_synthetic, write_synthetic

__all__ = [
    "BATCH_KEYS", "FRAME_RATES", "SPLITS", "UNK_ID", "EvalCondition", "Split", "SplitDataset",
    "SyntheticConfig", "TrainingMissingness", "UnsafePickleError", "apply_condition", "batch_to",
    "batches_from_split", "draw_kept_modalities", "evaluation_conditions", "frame_missing",
    "generate_synthetic", "load_mmsa", "make_loader", "modality_missing", "restricted_load",
    "split_from_mmsa", "write_synthetic",
]
