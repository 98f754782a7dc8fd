"""Datasets: the formats users have, checks, registration and a synthetic IWP generator."""

from .check import find_problems, summarize
from .formats import assign_category_ids, detect_format, load_records, write_dataset
from .register import SYNTHETIC_NAME, ensure_synthetic_dataset, find_dataset_files, register_dataset
from .synthetic import CLASSES as SYNTHETIC_CLASSES
from .synthetic import SyntheticIWPSpec, generate_dataset, generate_tile
