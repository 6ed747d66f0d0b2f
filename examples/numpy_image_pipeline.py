"""A numpy image pipeline: synthesize frames, blur them (two workers), then
measure each one (one worker).  Arrays travel between the stages as fastq
messages with their pixels out-of-band: one copy into the queue's ring, none
through the parent.

    python examples/numpy_image_pipeline.py [FRAMES]
"""
import sys

import numpy as np

import fastq


def make_frame(i):
    rng = np.random.default_rng(i)
    return i, rng.random((256, 256), dtype=np.float32)


def blur(frame):
    i, img = frame
    out = img.copy()
    out[1:-1, 1:-1] = (img[:-2, 1:-1] + img[2:, 1:-1] + img[1:-1, :-2] + img[1:-1, 2:]
                       + img[1:-1, 1:-1]) / 5
    return i, out


def stats(frame):
    i, img = frame
    return i, float(img.mean()), float(img.std())


if __name__ == "__main__":
    frames = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    with fastq.pipeline(range(frames), make_frame, fastq.Stage(blur, workers=2),
                        stats) as results:
        rows = list(results)
    assert [i for i, _, _ in rows] == list(range(frames))
    mean_std = sum(s for _, _, s in rows) / frames
    print(f"{frames} frames; mean std after blur {mean_std:.4f} (about 0.13 for uniform noise)")
