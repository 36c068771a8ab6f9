"""Panels composed into one titled PNG grid."""
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from samsa_geo.visualization.selection import PathLike


def _font(size: int) -> Any:
    from PIL import ImageFont
    try:  # a scalable font (Pillow >= 10.1 with FreeType)
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def compose_grid(images: np.ndarray, titles: Sequence[str], ncols: int,
                 out_png: PathLike, caption: Optional[str] = None) -> Path:
    r"""Saves images :obj:`[num, height, width, 3]` as one PNG grid of
    :obj:`ncols` columns, each image titled, with a band on top for
    :obj:`caption` if given."""
    from PIL import Image, ImageDraw

    num, height, width, _ = images.shape
    nrows = -(-num // ncols)
    # Panel titles scale with the panel; the caption gets a band on top.
    font = _font(max(10, min(width, height) // 20))
    band = 0
    if caption:
        caption_font = _font(max(12, min(width, height) // 14))
        band = int(caption_font.size * 1.6) if hasattr(
            caption_font, 'size') else 20
    grid = np.full((band + nrows * height, ncols * width, 3), 255,
                   dtype=np.uint8)
    for p in range(num):
        r, c = divmod(p, ncols)
        top = band + r * height
        grid[top:top + height, c * width:(c + 1) * width] = images[p]
    image = Image.fromarray(grid)
    draw = ImageDraw.Draw(image)
    if caption:
        draw.text((6, band // 5), caption, fill=(0, 0, 0), font=caption_font)
    for p, title in enumerate(titles):
        r, c = divmod(p, ncols)
        draw.text((c * width + 4, band + r * height + 3), title,
                  fill=(0, 0, 0), font=font)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_png)
    return out_png
