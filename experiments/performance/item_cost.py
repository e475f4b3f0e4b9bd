"""Per-image cost of the data path in one worker (one thread): before and after this round.

    python experiments/performance/item_cost.py            # ~1 min on the 2-core CPU

*before*: what ``SizedDataset`` did until 2026-11-26 — ``load_rgb`` (full decode), then a
``v2.Compose(RandomResizedCrop, RandomHorizontalFlip, PILToTensor)``, seeded per item with
``torch.manual_seed`` inside ``fork_rng`` (training items). *now*: ``SizedDataset`` as it is (an
:class:`~resflex.data.images.ImageFile` decoded at the scale the crop needs, v2
functionals called directly, only the CPU generator reseeded). Files: the benchmark's
synthetic JPEGs with sides in [s, 2s] for s = 64 (small files) and 250 (photo-sized).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision.datasets import DatasetFolder
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ lives beside src/

from benchmarks.sections import write_image_folder
from resflex.data.datamodule import SizedDataset
from resflex.data.datasets import ImageFolderSource
from resflex.data.images import IMAGE_EXTENSIONS, load_rgb
from resflex.data.transforms import EvalTransform, TrainTransform

N = 400


class BeforeSizedDataset(SizedDataset):
    """``SizedDataset.__getitem__`` as it was: every random item reseeded with ``torch.manual_seed``."""

    def __getitem__(self, item: tuple) -> tuple[torch.Tensor, int]:
        index, h, w, _, epoch = item
        if epoch is None:
            return self._load_and_transform(index, self.transform, (h, w))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, epoch, index)) & 0x7FFF_FFFF)
            return self._load_and_transform(index, self.transform, (h, w))


class BeforeTrainTransform:
    """The composed v2 pipeline the train transform was (one per size)."""

    def __init__(self) -> None:
        self.pipelines: dict[tuple[int, int], v2.Compose] = {}

    def __call__(self, image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
        if size not in self.pipelines:
            crop = v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True)
            self.pipelines[size] = v2.Compose([crop, v2.RandomHorizontalFlip(), v2.PILToTensor()])
        return self.pipelines[size](image)


def cost(dataset: SizedDataset, size: int, train: bool) -> float:
    return _time(lambda i: dataset[(i, size, size, None, 1 if train else None)])


def _time(fn) -> float:  # type: ignore[no-untyped-def]
    for i in range(40):
        fn(i)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for i in range(N):
            fn(i)
        best = min(best, (time.perf_counter() - start) / N * 1e3)
    return best


def main() -> None:
    torch.set_num_threads(1)  # as in a DataLoader worker
    print(f"{'files':>12} {'size':>5} {'split':>6} {'before ms':>10} {'now ms':>8} {'speed-up':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for side in (64, 250):
            root = write_image_folder(Path(tmp) / str(side), N, side)
            folder = DatasetFolder(str(root / "train"), loader=load_rgb, extensions=IMAGE_EXTENSIONS)
            train = ImageFolderSource(str(root)).splits["train"]
            before = {
                True: BeforeSizedDataset(folder, BeforeTrainTransform(), seed=0),
                False: BeforeSizedDataset(folder, EvalTransform(), seed=0),
            }
            now = {
                True: SizedDataset(train, TrainTransform(scale=(0.35, 1.0)), seed=0),
                False: SizedDataset(train, EvalTransform(), seed=0),
            }
            for size in (64, 128, 224):
                for is_train in (True, False):
                    a, b = cost(before[is_train], size, is_train), cost(now[is_train], size, is_train)
                    split = "train" if is_train else "eval"
                    files = f"{side}-{2 * side} px"
                    print(f"{files:>12} {size:>5} {split:>6} {a:>10.3f} {b:>8.3f} {a / b:>8.2f}x")


if __name__ == "__main__":
    main()
