"""Reading and writing images: folders of PNG/JPEG, ``.npz`` arrays, PNG grids (atomic writes)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_file
from .disk import translate_disk_full
from .errors import InvalidArgumentError, MissingFileError, OutOfRangeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _fit(image: Image.Image, size: int) -> np.ndarray:
    """Resize the short side to ``size`` and centre-crop; transparency is composited onto white."""
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    if scale != 1.0:
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def split_indices(data, key: str, count: int, source: Path) -> np.ndarray:
    """The index array ``key`` of an opened .npz, checked against ``count`` items (no wrap-around of -1)."""
    if key not in data:
        raise InvalidArgumentError(f"{source} has no '{key}' array (it has: {', '.join(data.files)})")
    indices = np.asarray(data[key])
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise InvalidArgumentError(f"{source}: '{key}' must be a 1-D integer index array, got {indices.dtype} {indices.shape}")
    bad = indices[(indices < 0) | (indices >= count)]
    if bad.size:
        raise OutOfRangeError(f"{source}: '{key}' holds index {int(bad[0])}, outside [0, {count})")
    return indices


def load_images(path: str | os.PathLike, size: int, *, indices_key: str | None = None,
                report: bool = True) -> np.ndarray:
    """Load images as uint8 ``[N, size, size, 3]``.

    ``path`` is a folder of image files (sorted by name), a single image file, or an ``.npz`` with an
    ``images`` array ``[N, H, W, 3]`` uint8. Images of another size are resized and centre-cropped to
    ``size``; ``report`` says how many were. For an ``.npz``, ``indices_key`` selects a subset by an
    index array stored beside it (``train_idx``); it is refused for other inputs.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no such image file or folder: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data:
                raise InvalidArgumentError(f"{path} has no 'images' array (it has: {', '.join(data.files)})")
            images = data["images"]
            if indices_key is not None:
                images = images[split_indices(data, indices_key, len(images), path)]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise InvalidArgumentError(f"{path}: 'images' must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
        if len(images) == 0:
            raise InvalidArgumentError(f"{path}: no images selected")
        if images.shape[1:3] != (size, size):
            if report:
                print(f"resizing all {len(images)} images of {path} from {images.shape[1]}x{images.shape[2]} "
                      f"to {size}x{size} (centre crop)", file=sys.stderr)
            images = np.stack([_fit(Image.fromarray(im), size) for im in images])
        return np.ascontiguousarray(images)
    if indices_key is not None:
        raise InvalidArgumentError(f"a split ('{indices_key}') selects images of an .npz file; {path} is not one")
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidArgumentError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images, resized = [], 0
    for file in files:
        try:
            with Image.open(file) as image:
                resized += image.size != (size, size)
                images.append(_fit(image, size))
        except OSError as error:
            raise InvalidArgumentError(f"cannot read image {file}: {error}") from error
    if resized and report:
        print(f"resized and centre-cropped {resized} of {len(files)} images in {path} to {size}x{size}", file=sys.stderr)
    return np.stack(images)


def make_grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile uint8 ``[N, H, W, 3]`` images into one picture with white padding."""
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y:y + h, x:x + w] = image
    return grid


#: Image formats a file may be written in, by suffix (Pillow's names).
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def image_format(path: str | os.PathLike) -> str:
    """The format that ``path``'s suffix names; InvalidArgumentError for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise InvalidArgumentError(f"{path}: the suffix must name an image format ({', '.join(IMAGE_FORMATS)})")
    return IMAGE_FORMATS[suffix]


def save_image(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write one uint8 ``[H, W, 3]`` image atomically, in the format its suffix names."""
    path = Path(path)
    fmt = image_format(path)
    with translate_disk_full(path, image.nbytes), atomic_file(path) as tmp:
        Image.fromarray(image).save(tmp, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return path


def to_model_input(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float32 ``[B, 3, H, W]`` in [-1, 1], the models' image range."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def from_model_output(images: torch.Tensor) -> np.ndarray:
    """float ``[B, 3, H, W]`` in [-1, 1] (clamped) -> uint8 ``[B, H, W, 3]`` on the CPU."""
    return images.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
