"""Input-pipeline throughput alone (no model), on a given number of CPU cores, over synthetic JPEGs of
ImageNet's typical size (500 x 375, about 110 KB):

    python -m resnet_jax.data.benchmark --cores 2 --num_images 2048 --batch_size 64 --source tfds

The images are written to --data_root (a temporary folder by default) as <root>/images/<split>/<class>/
and, for --source tfds, also stored as a prepared TFDS dataset; the pipeline is then built exactly as
training builds it (build_pipeline). The process is pinned to --cores cores before TensorFlow is
imported, so tf.data's thread pools size themselves to them.

Measured on what the host hands the devices (the feeds: uint8 crops from file-backed datasets; the
devices normalise and augment them), as images/s of wall time and per CPU-second the process used
(the per-core figure that holds on a machine shared with other work), and the bytes per image fed:
  train   the feeds of the first epoch (or the first --timed_batches) after the first --warmup (the
          first batch includes start-up; later ones are the steady state);
  eval    the eval feeds after the first;
  resume  seconds from train_feed(start_step) to its first feed, at several positions in the
          epoch, and a least-squares cost per skipped example.

With --compare_flax PATH (a checkout of google/flax's examples/imagenet, never part of this
repository), the command instead runs, in this process, alternating trials of our feeds and flax's
own `input_pipeline.create_split` over the same TFDS records: train with `inception` and with
`paper_imagenet` against flax's train split, our `center` eval against flax's eval split, each trial
a fresh iterator timed over --timed_batches after --warmup. It prints images per CPU-second of each,
the ratio ours / flax, the bytes per image each hands over, and the load average.
"""

import gc
import importlib.util
import json
import os
import resource
import tempfile
import time
from typing import Callable, Iterator, Optional

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


def make_config(args, root: str, augment: Optional[str] = None):
    from resnet_jax.config import base_config

    c = base_config()
    c.global_batch_size = c.eval_batch_size = args.batch_size
    c.data.image_size = args.image_size
    c.data.train_augment = augment or args.augment
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
    next(pipeline.train_feed(start_step))
    return time.perf_counter() - start


def build(args, root: str, augment: Optional[str] = None):
    """Our host pipeline of the benchmark's dataset, built as training builds it."""
    from resnet_jax.config import validate_config
    from resnet_jax.data import HostSlice, build_pipeline

    config = make_config(args, root, augment)
    validate_config(config)
    return build_pipeline(config.data, HostSlice(args.batch_size, args.batch_size), config.seed)


def bytes_per_image(batch: dict) -> int:
    """Bytes of the image array of a batch, per image."""
    return batch["image"].nbytes // len(batch["image"])


def measure(args, root: str) -> dict:
    pipeline = build(args, root)
    steps = pipeline.steps_per_epoch
    if steps <= args.warmup:
        raise FlagError(f"--num_images {args.num_images} gives {steps} steps per epoch; need more "
                        f"than --warmup {args.warmup}")
    batches = pipeline.train_feed(0)
    start = time.perf_counter()
    for _ in range(args.warmup):
        next(batches)
    first_batches_s = time.perf_counter() - start
    timed = min(args.timed_batches or steps, steps) - args.warmup
    start, cpu_start = time.perf_counter(), cpu_seconds()
    for _ in range(timed):
        host_bytes_per_image = bytes_per_image(next(batches))
    train_rate = timed * args.batch_size / (time.perf_counter() - start)
    train_per_cpu_s = timed * args.batch_size / (cpu_seconds() - cpu_start)
    batches.close()  # stops its prefetching before the next measurements

    eval_batches = pipeline.eval_feed()
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
        "host_bytes_per_image": host_bytes_per_image,
        "eval_images_per_s": eval_rate, "eval_images_per_cpu_s": eval_per_cpu_s,
        "resume_s_by_step": resume, "resume_s_per_skipped_example": slope,
        "resume_s_at_position_0": intercept,
    }


def timed_trial(make_batches: Callable[[], Iterator[dict]], warmup: int, timed: int) -> dict:
    """One trial on a fresh iterator: images per CPU-second and per second over `timed` batches
    after `warmup`, and the bytes per image handed over; the iterator is closed afterwards, so
    that its prefetching does not run into the next trial."""
    batches = make_batches()
    for _ in range(warmup):
        next(batches)
    images = 0
    start, cpu_start = time.perf_counter(), cpu_seconds()
    for _ in range(timed):
        batch = next(batches)
        images += len(batch["image"])
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    if hasattr(batches, "close"):
        batches.close()
    del batches
    gc.collect()
    return {"images_per_cpu_s": images / cpu, "images_per_s": images / wall,
            "bytes_per_image": bytes_per_image(batch)}


def alternating_trials(contenders: dict[str, Callable[[], Iterator[dict]]], trials: int,
                       warmup: int, timed: int) -> dict[str, dict]:
    """Each contender `trials` times, in turn (A B A B ...): per contender the trials' images per
    CPU-second, their median, the median images per second, and bytes per image."""
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for _ in range(trials):
        for name, make_batches in contenders.items():
            runs[name].append(timed_trial(make_batches, warmup, timed))
    return {name: {"images_per_cpu_s": float(np.median([r["images_per_cpu_s"] for r in rs])),
                   "images_per_s": float(np.median([r["images_per_s"] for r in rs])),
                   "trials_images_per_cpu_s": [r["images_per_cpu_s"] for r in rs],
                   "bytes_per_image": rs[0]["bytes_per_image"]}
            for name, rs in runs.items()}


def flax_module_path(path: str) -> str:
    """The input_pipeline.py of a checkout of flax's examples/imagenet at `path`."""
    module_path = os.path.join(path, "input_pipeline.py")
    if not os.path.isfile(module_path):
        raise FlagError(f"--compare_flax={path!r} has no input_pipeline.py (expected a checkout of "
                        f"google/flax's examples/imagenet)")
    return module_path


def flax_input_pipeline(path: str):
    """flax's examples/imagenet/input_pipeline.py, imported from the checkout at `path`."""
    module_path = flax_module_path(path)
    spec = importlib.util.spec_from_file_location("flax_imagenet_input_pipeline", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare_flax(args, root: str) -> dict:
    """Alternating trials of ours and flax's input pipeline over the same TFDS records (see the
    module docstring)."""
    import tensorflow_datasets as tfds

    flax_pipeline = flax_input_pipeline(args.compare_flax)
    builder = tfds.builder(TFDS_NAME, data_dir=os.path.join(root, "tfds"))
    train = flax_pipeline.create_split(builder, args.batch_size, train=True,
                                       image_size=args.image_size)
    held_out = flax_pipeline.create_split(builder, args.batch_size, train=False,
                                          image_size=args.image_size)
    ours = {augment: build(args, root, augment) for augment in ("inception", "paper_imagenet")}
    pairs = {"train inception": (lambda: ours["inception"].train_feed(0), train),
             "train paper_imagenet": (lambda: ours["paper_imagenet"].train_feed(0), train),
             "eval center": (lambda: ours["inception"].eval_feed(), held_out)}
    load_before = os.getloadavg()
    results = {}
    for name, (ours_feeds, flax_dataset) in pairs.items():
        trials = alternating_trials({"ours": ours_feeds, "flax": flax_dataset.as_numpy_iterator},
                                    args.trials, args.warmup, args.timed_batches)
        ratio = trials["ours"]["images_per_cpu_s"] / trials["flax"]["images_per_cpu_s"]
        results[name] = {**trials, "ours_over_flax": ratio}
        print(f"{name}: ours {trials['ours']['images_per_cpu_s']:.0f}, flax "
              f"{trials['flax']['images_per_cpu_s']:.0f} images per CPU-second ({ratio:.2f}x); "
              f"bytes per image: ours {trials['ours']['bytes_per_image']:,}, flax "
              f"{trials['flax']['bytes_per_image']:,}", flush=True)
    return {"batch_size": args.batch_size, "image_size": args.image_size, "cores": args.cores,
            "num_images": args.num_images, "num_eval_images": args.num_eval_images,
            "trials": args.trials, "warmup": args.warmup, "timed_batches": args.timed_batches,
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "results": results}


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
    flags.DEFINE_string("compare_flax", None,
                        "A checkout of google/flax's examples/imagenet: compare with its input "
                        "pipeline instead (alternating trials; --source tfds).")
    flags.DEFINE_integer("trials", 3, "--compare_flax: trials of each pipeline, alternating.")


def main(argv) -> None:
    del argv
    args = flags.FLAGS
    if args.num_eval_images <= args.batch_size:
        raise FlagError("--num_eval_images must exceed --batch_size (the first eval batch is not "
                        "timed)")
    if args.compare_flax:
        if args.source != "tfds" or not args.timed_batches:
            raise FlagError("--compare_flax needs --source tfds and --timed_batches")
        flax_module_path(args.compare_flax)
        if (args.warmup + args.timed_batches) * args.batch_size > args.num_eval_images:
            raise FlagError("--compare_flax: --num_eval_images must hold --warmup + "
                            "--timed_batches eval batches")
    allowed = sorted(os.sched_getaffinity(0))
    if args.cores and args.cores < len(allowed):
        os.sched_setaffinity(0, allowed[:args.cores])
    args.cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as scratch:
        root = args.data_root or scratch
        start = time.perf_counter()
        write_dataset(root, args.num_images, args.num_eval_images, args.source)
        print(f"data ready in {time.perf_counter() - start:.1f} s under {root}", flush=True)
        results = compare_flax(args, root) if args.compare_flax else measure(args, root)
    print(json.dumps(results, indent=2, default=str))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
