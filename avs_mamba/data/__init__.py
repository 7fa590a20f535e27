"""AVSBench data: S4/MS3/AVSS datasets in the official layouts, the VGGish log-mel front-end, clip transforms,
and the whole-dataset check."""

from avs_mamba.data.audio import (
    fit_examples,
    load_audio_examples,
    load_wav,
    read_audio_pkl,
    save_audio_pkl,
    waveform_to_examples,
)
from avs_mamba.data.avsbench import (
    AVSS_SUBSETS,
    IGNORE_INDEX,
    NUM_CLASSES,
    NUM_FRAMES,
    SPLITS,
    TASKS,
    AVSSDataset,
    DatasetError,
    MS3Dataset,
    S4Dataset,
    build_dataset,
)
from avs_mamba.data.checks import CheckReport, check_dataset
from avs_mamba.data.transforms import TrainAugment

__all__ = [
    "AVSS_SUBSETS",
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "NUM_FRAMES",
    "SPLITS",
    "TASKS",
    "AVSSDataset",
    "CheckReport",
    "DatasetError",
    "MS3Dataset",
    "S4Dataset",
    "TrainAugment",
    "build_dataset",
    "check_dataset",
    "fit_examples",
    "load_audio_examples",
    "load_wav",
    "read_audio_pkl",
    "save_audio_pkl",
    "waveform_to_examples",
]
