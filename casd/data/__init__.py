"""Data: MMSA feature pickles, the synthetic data set, missingness protocols, torch batches."""
from casd.data.loader import BATCH_KEYS, SplitDataset, batch_to, batches_from_split, make_loader
from casd.data.missing import (FRAME_RATES, UNK_ID, EvalCondition, TrainingMissingness,
                               apply_condition, draw_kept_modalities, evaluation_conditions,
                               frame_missing, modality_missing)
from casd.data.mmsa import SPLITS, Split, load_mmsa, split_from_mmsa
from casd.data.errors import CorruptPickleError, InvalidDataError, PickleTooLargeError, UnsafePickleError
from casd.data.safe_pickle import restricted_load
from casd.data.synthetic import SyntheticConfig, generate_synthetic, write_synthetic
from casd.data.validate import LABEL_RANGES, MAX_CLASSES, DataDescription, validate_split, validate_splits

__all__ = [
    "BATCH_KEYS", "FRAME_RATES", "LABEL_RANGES", "MAX_CLASSES", "SPLITS", "UNK_ID", "CorruptPickleError",
    "DataDescription", "EvalCondition", "InvalidDataError", "PickleTooLargeError", "Split", "SplitDataset",
    "SyntheticConfig", "TrainingMissingness", "UnsafePickleError", "apply_condition", "batch_to",
    "batches_from_split", "draw_kept_modalities", "evaluation_conditions", "frame_missing",
    "generate_synthetic", "load_mmsa", "make_loader", "modality_missing", "restricted_load",
    "split_from_mmsa", "validate_split", "validate_splits", "write_synthetic",
]
