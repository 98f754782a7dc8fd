"""Datasets: the formats users have, checks, registration and a synthetic IWP generator."""

from .check import InvalidRecordError, annotation_problem, find_problems, record_name, summarize
from .formats import (
    DatasetFormatError,
    assign_category_ids,
    class_name_variants,
    detect_format,
    load_records,
    write_dataset,
)
from .images import read_image
from .register import (
    SYNTHETIC_NAME,
    ensure_synthetic_dataset,
    find_dataset_files,
    register_dataset,
    split_by_name,
)
from .synthetic import CLASSES as SYNTHETIC_CLASSES
from .synthetic import SyntheticIWPSpec, generate_dataset, generate_tile
