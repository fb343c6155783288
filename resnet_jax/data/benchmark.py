"""Input-pipeline throughput alone (no model), on a given number of CPU cores, over synthetic JPEGs of
ImageNet's typical size (500 x 375, about 110 KB):

    python -m resnet_jax.data.benchmark --cores 2 --num_images 2048 --batch_size 64 --source tfds

The images are written to --data_root (a temporary folder by default) as <root>/images/<split>/<class>/
and, for --source tfds, also stored as a prepared TFDS dataset; the pipeline is then built exactly as
training builds it (build_pipeline). The process is pinned to --cores cores before TensorFlow is
imported, so tf.data's thread pools size themselves to them.

Measured, as images/s of wall time and per CPU-second the process used (the per-core figure that holds
on a machine shared with other work):
  train   the batches of the first epoch (or the first --timed_batches) after the first --warmup (the
          first batch includes start-up; later ones are the steady state);
  eval    the eval batches after the first;
  resume  seconds from train_batches(start_step) to its first batch, at several positions in the
          epoch, and a least-squares cost per skipped example.
"""

import json
import os
import resource
import tempfile
import time

import numpy as np
from absl import flags

from resnet_jax import cli
from resnet_jax.errors import FlagError

TFDS_NAME = "benchmark_jpegs"
IMAGENET_SHUFFLE_BUFFER = 9_500  # the default buffer for ImageNet (1 GiB of its JPEGs)


def write_dataset(root: str, num_images: int, num_eval_images: int, source: str) -> None:
    """Synthetic ImageNet-like JPEGs under root (skipped if already there)."""
    from resnet_jax.data.benchmark_files import store_folder_as_tfds, write_image_folder

    folder = os.path.join(root, "images")
    if not os.path.isdir(folder):
        write_image_folder(folder, {"train": num_images, "validation": num_eval_images}, 10,
                           unique_images=64)
    if source == "tfds" and not os.path.isdir(os.path.join(root, "tfds", TFDS_NAME)):
        store_folder_as_tfds(folder, TFDS_NAME, os.path.join(root, "tfds"))


def make_config(args, root: str):
    from resnet_jax.config import base_config

    c = base_config()
    c.global_batch_size = c.eval_batch_size = args.batch_size
    c.data.image_size = args.image_size
    c.data.train_augment = args.augment
    if args.source == "tfds":
        c.data.update({"dataset": "tfds", "tfds_name": TFDS_NAME,
                       "data_dir": os.path.join(root, "tfds")})
    else:
        c.data.update({"dataset": "folder", "folder": os.path.join(root, "images")})
    c.data.normalization = "torchvision"
    c.data.shuffle_buffer = args.shuffle_buffer or None
    c.data.placement = "host"  # the host input pipeline is what is measured, whatever its size
    return c


def cpu_seconds() -> float:
    """User + system CPU time of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def seconds_to_first_batch(pipeline, start_step: int) -> float:
    start = time.perf_counter()
    next(pipeline.train_batches(start_step))
    return time.perf_counter() - start


def measure(args, root: str) -> dict:
    from resnet_jax.config import validate_config
    from resnet_jax.data import HostSlice, build_pipeline

    config = make_config(args, root)
    validate_config(config)
    pipeline = build_pipeline(config.data, HostSlice(args.batch_size, args.batch_size), config.seed)
    steps = pipeline.steps_per_epoch
    if steps <= args.warmup:
        raise FlagError(f"--num_images {args.num_images} gives {steps} steps per epoch; need more "
                        f"than --warmup {args.warmup}")
    batches = pipeline.train_batches(0)
    start = time.perf_counter()
    for _ in range(args.warmup):
        next(batches)
    first_batches_s = time.perf_counter() - start
    timed = min(args.timed_batches or steps, steps) - args.warmup
    start, cpu_start = time.perf_counter(), cpu_seconds()
    for _ in range(timed):
        next(batches)
    train_rate = timed * args.batch_size / (time.perf_counter() - start)
    train_per_cpu_s = timed * args.batch_size / (cpu_seconds() - cpu_start)
    batches.close()  # stops its prefetching before the next measurements

    eval_batches = pipeline.eval_batches()
    next(eval_batches)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    eval_count = sum(int(b["mask"].sum()) for b in eval_batches)
    eval_rate = eval_count / (time.perf_counter() - start)
    eval_per_cpu_s = eval_count / (cpu_seconds() - cpu_start)

    positions = sorted({0, steps // 4, steps // 2, 3 * steps // 4, steps - 1})
    resume = {p: seconds_to_first_batch(pipeline, p) for p in positions}
    skipped = np.array([p * args.batch_size for p in positions], np.float64)
    slope, intercept = np.polyfit(skipped, [resume[p] for p in positions], 1)
    return {
        "source": args.source, "augment": pipeline.preprocessor.train_augment,
        "image_size": args.image_size, "cores": args.cores, "batch_size": args.batch_size,
        "num_images": args.num_images,
        "mean_jpeg_bytes": mean_jpeg_bytes(os.path.join(root, "images", "train")),
        "train_images_per_s": train_rate, "train_images_per_s_per_core": train_rate / args.cores,
        "train_images_per_cpu_s": train_per_cpu_s, "first_batches_s": first_batches_s,
        "eval_images_per_s": eval_rate, "eval_images_per_cpu_s": eval_per_cpu_s,
        "resume_s_by_step": resume, "resume_s_per_skipped_example": slope,
        "resume_s_at_position_0": intercept,
    }


def mean_jpeg_bytes(folder: str) -> float:
    sizes = [e.stat().st_size for d in os.scandir(folder) for e in os.scandir(d.path)]
    return float(np.mean(sizes))


def define_flags() -> None:
    flags.DEFINE_integer("cores", None, "Pin to this many cores (default: all allowed).")
    flags.DEFINE_integer("num_images", 2048, "Train images (an epoch).")
    flags.DEFINE_integer("num_eval_images", 256, "Eval images.")
    flags.DEFINE_integer("batch_size", 64, "Batch size.")
    flags.DEFINE_integer("image_size", 224, "Output image side.")
    flags.DEFINE_enum("augment", "inception", ["paper_imagenet", "inception", "cifar", "none"],
                      "Train augmentation.")
    flags.DEFINE_enum("source", "tfds", ["tfds", "folder"], "Read a prepared TFDS copy or the folder.")
    flags.DEFINE_integer("shuffle_buffer", IMAGENET_SHUFFLE_BUFFER,
                         "TFDS shuffle buffer; the default (ImageNet's) streams the records as "
                         "ImageNet's are; 0: the pipeline's choice (holds a small set in memory).")
    flags.DEFINE_integer("warmup", 2, "Batches not timed.")
    flags.DEFINE_integer("timed_batches", None,
                         "Stop timing after this many batches (default: the whole first epoch).")
    flags.DEFINE_string("data_root", None, "Keep the generated images here (reused when present).")
    flags.DEFINE_string("json", None, "Also write the results to this file.")


def main(argv) -> None:
    del argv
    args = flags.FLAGS
    if args.num_eval_images <= args.batch_size:
        raise FlagError("--num_eval_images must exceed --batch_size (the first eval batch is not "
                        "timed)")
    allowed = sorted(os.sched_getaffinity(0))
    if args.cores and args.cores < len(allowed):
        os.sched_setaffinity(0, allowed[:args.cores])
    args.cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as scratch:
        root = args.data_root or scratch
        start = time.perf_counter()
        write_dataset(root, args.num_images, args.num_eval_images, args.source)
        print(f"data ready in {time.perf_counter() - start:.1f} s under {root}", flush=True)
        results = measure(args, root)
    print(json.dumps(results, indent=2, default=str))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
