"""Data: image folders, unpaired datasets, the built-in synthetic task.

Images are RGB float tensors 3xHxW in [-1, 1] (batched by a DataLoader to NCHW); for a teacher of
1-channel data they are read as grayscale, 1xHxW (``channels``, from :func:`domain_channels`).
A data set folder holds ``trainA``, ``trainB``, ``testA``, ``testB``; see datasets/README.md.

Typical use::

    from coevo.data import UnpairedImageDataset, make_loader, split_train_val
    train = UnpairedImageDataset("datasets/synthetic", load_size=64, crop_size=64, seed=0)
    loader = make_loader(train, batch_size=1, seed=0, epoch=3)   # epoch 3, replayable
"""
from .errors import DataError
from .folder import (
    SingleImageDataset,
    UnpairedImageDataset,
    domain_channels,
    make_loader,
    sample_rng,
    split_train_val,
)
from .images import (
    IMAGE_CHANNELS,
    IMAGE_EXTENSIONS,
    check_channels,
    check_image,
    find_bad_images,
    is_image_file,
    list_images,
    load_image,
    to_image,
    to_mode,
    to_rgb,
    to_tensor,
)
from .prepare import DataSplits, build_datasets, ensure_data_root, resolve_root, train_val_indices
from .record import check_same_data, data_record
from .synthetic import make_synthetic_dataset, render_scene

__all__ = [
    "DataError", "IMAGE_EXTENSIONS", "IMAGE_CHANNELS", "check_channels", "domain_channels", "to_mode",
    "load_image", "list_images", "check_image", "find_bad_images", "is_image_file",
    "to_tensor", "to_image", "to_rgb",
    "UnpairedImageDataset", "SingleImageDataset", "split_train_val", "make_loader", "sample_rng",
    "make_synthetic_dataset", "render_scene",
    "ensure_data_root", "resolve_root", "build_datasets", "DataSplits", "train_val_indices",
    "data_record", "check_same_data",
]
