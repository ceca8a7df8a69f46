"""Real photos, no labels: the colour sample images bundled with scikit-learn and scikit-image
(no download), cut into seeded random square crops (with horizontal flips) at 224x224 and scaled to
[-1, 1] like the model's training data. ``photos()`` returns the (N, 3, 224, 224) float32 array for
``data: {source: callable}``; the samples are already normalised, so the pipeline leaves them as they are."""
from __future__ import annotations

import numpy as np

SIZE = 224
PER_IMAGE = 24
#: scikit-image's colour/grey sample photos, after scikit-learn's china.jpg and flower.jpg (in this order)
IMAGE_FILES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
               "motorcycle_right.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "camera.png",
               "moon.png", "coins.png", "brick.png", "grass.png", "gravel.png", "horse.png")


def _images() -> list[np.ndarray]:
    import os

    import skimage
    from PIL import Image
    from sklearn.datasets import load_sample_images

    imgs = [np.asarray(i) for i in load_sample_images().images]  # china.jpg, flower.jpg
    folder = os.path.dirname(skimage.data.__file__)
    for name in IMAGE_FILES:
        im = Image.open(os.path.join(folder, name)).convert("RGB")
        imgs.append(np.asarray(im))
    return imgs


def photos(per_image: int = PER_IMAGE, seed: int = 0) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for img in _images():
        h, w = img.shape[:2]
        for k in range(per_image):
            side = int(rng.uniform(0.5, 1.0) * min(h, w))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(img[top:top + side, left:left + side]).resize((SIZE, SIZE), Image.BILINEAR)
            a = np.asarray(crop, dtype=np.float32)
            if k % 2:
                a = a[:, ::-1]
            out.append(a.transpose(2, 0, 1))
    return ((np.stack(out) - 127.5) / 127.5).astype(np.float32)
