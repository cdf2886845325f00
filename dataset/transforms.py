"""The reference's transforms."""
from __future__ import annotations

from typing import Callable, Sequence

from torchvision import transforms

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def get_data_transforms(size: int, isize: int, mean_train: Sequence[float] | None = None,
                        std_train: Sequence[float] | None = None
                        ) -> tuple[transforms.Compose, transforms.Compose]:
    """The reference's transforms, in its exact order.

    image: PIL ``H × W`` RGB -> ``Resize((size, size))`` (PIL bilinear, antialiased) -> ``ToTensor``
    -> ``CenterCrop(isize)`` -> ``Normalize`` -> tensor ``3 × isize × isize``.
    mask: PIL ``H × W`` -> ``Resize((size, size))`` (bilinear, fractional edges) -> ``CenterCrop(isize)``
    -> ``ToTensor`` -> tensor ``1 × isize × isize`` in [0, 1] for the mode L masks ``load_mask`` gives.
    """
    mean_train = IMAGENET_MEAN if mean_train is None else list(mean_train)
    std_train = IMAGENET_STD if std_train is None else list(std_train)
    data_transform = transforms.Compose([
        transforms.Resize((size, size)),
        transforms.ToTensor(),
        transforms.CenterCrop(isize),
        transforms.Normalize(mean=mean_train, std=std_train),
    ])
    gt_transform = transforms.Compose([
        transforms.Resize((size, size)),
        transforms.CenterCrop(isize),
        transforms.ToTensor(),
    ])
    return data_transform, gt_transform


def split_resize(transform: Callable) -> tuple[transforms.Resize, transforms.Compose]:
    """Split ``Compose([Resize, *rest])`` into ``(Resize, Compose(rest))`` for the image cache.

    ``rest(resize(img))`` is ``transform(img)`` step for step, so cached results are exact.
    """
    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, transforms.Compose) or not steps or not isinstance(steps[0], transforms.Resize):
        raise ValueError("the image cache needs a transforms.Compose whose first step is Resize "
                         f"(as get_data_transforms returns); got {transform!r}")
    return steps[0], transforms.Compose(list(steps[1:]))
