"""The galleries' 256-colour PNGs keep the colormap's scale (`pipeline.report.figures.palette_png`): every
pixel of a signed map and of its colour bar stays within a few levels of the full-colour render, where a
plain adaptive palette had merged the colormap's blue half into a few colours."""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.report.figures import GALLERY_CMAP, palette_png  # noqa: E402


def render() -> Image.Image:
    """A gallery-like figure: photo-like panels (smooth colour ramps and noise) beside signed maps spanning
    the whole colour scale, and a colour bar."""
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(2, 3, figsize=(6, 4))
    x = np.linspace(-1, 1, 64)
    for i, ax in enumerate(axes.flat):
        if i % 3 == 0:
            ramps = np.stack([*np.meshgrid(x, x), x[None].repeat(64, 0)], -1)  # smooth colour, plus noise
            photo = 0.3 * rng.random((64, 64, 3)) + ramps * 0.3 + np.array([0.3, 0.5, 0.5])
            ax.imshow(np.clip(photo, 0, 1))
        else:
            # like a CAM: near zero, one positive blob, a faint negative one; the full blue half of the scale
            # shows in the colour bar only
            blob = np.exp(-((x[None] - 0.3 * i / 5) ** 2 + x[:, None] ** 2) * 6)
            signed = blob - 0.2 * np.exp(-((x[None] + 0.6) ** 2 + (x[:, None] + 0.5) ** 2) * 10)
            mappable = ax.imshow(signed, cmap=GALLERY_CMAP, vmin=-1, vmax=1)
    fig.colorbar(mappable, ax=axes)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_palette_keeps_the_colormap_and_the_photos():
    rgb = render()
    quantized = palette_png(rgb, GALLERY_CMAP)
    assert quantized.mode == "P" and len(quantized.getpalette()) <= 3 * 256
    a = np.asarray(rgb).astype(int)
    error = np.abs(np.asarray(quantized.convert("RGB")).astype(int) - a).max(axis=2).reshape(-1)
    lut = np.round(255 * plt.get_cmap(GALLERY_CMAP)(np.linspace(0, 1, 256))[:, :3]).astype(int)
    on_scale = np.abs(a.reshape(-1, 1, 3) - lut[None]).max(axis=2).min(axis=1) <= 2  # map and colour-bar pixels
    assert on_scale.mean() > 0.1
    assert error[on_scale].max() <= 10  # half a step of the 64-colour ramp, and rounding
    assert error[~on_scale].mean() <= 6  # the photos keep their adaptive colours
