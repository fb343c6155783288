"""Evaluate a run's checkpoint: python eval.py --workdir DIR [--step N | --all | --watch] [--ema]
[--config.field=value ...]

Model and data settings come from the config stored with the checkpoint; --config.<field>=<value>
overrides any field (e.g. --config.data.data_dir=... --config.eval_batch_size=...), and
--config FILE replaces the stored config. Other sources: --checkpoint <step folder>, or
--torchvision_weights FILE (its architecture read off the arrays; 1000 classes: ImageNet at 224). Results:
<workdir>/<name>/<step>.json, metrics.jsonl records of split <name>, TensorBoard under
<workdir>/tensorboard/<name>, and a table on stdout.
"""

import os

from absl import flags, logging

from resnet_jax import cli, parallel

cli.define_config_flag(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py"),
    "Config file replacing the stored config, used only when given (the default just defines "
    "the fields); --config.<field>=<value> overrides a field of either.")
flags.DEFINE_string("workdir", None, "Training run folder to evaluate; results are written here "
                    "(with --checkpoint or --torchvision_weights too, when given).")
flags.DEFINE_integer("step", None, "Evaluate this checkpoint step (default: the latest).")
flags.DEFINE_bool("all", False, "Evaluate every kept checkpoint (the curve after the fact).")
flags.DEFINE_bool("watch", False, "Evaluate each new checkpoint as training writes it; stops after "
                  "the final step or --watch_timeout seconds without a new checkpoint.")
flags.DEFINE_float("watch_timeout", 3600.0,
                   "Seconds without a new checkpoint before --watch stops.")
flags.DEFINE_float("poll_seconds", 10.0, "How often --watch looks for new checkpoints.")
flags.DEFINE_string("checkpoint", None,
                    "A checkpoint step folder (<dir>/<step>) outside a workdir.")
flags.DEFINE_string("torchvision_weights", None, "torchvision state dict (.safetensors/.pth, "
                    "local or gs://) to evaluate; the architecture is read off its arrays and a "
                    "1000-class one evaluates ImageNet at 224, unless --config.* says otherwise.")
flags.DEFINE_bool("per_class", False, "Also report top-1 accuracy per class.")
flags.DEFINE_bool("allow_unverified_checkpoint", False,
                  "Evaluate a checkpoint even when its integrity record is missing or unreadable "
                  "(its files then cannot be checked; damaged ones are still refused).")
flags.DEFINE_bool("ema", False, "Evaluate the checkpoint's EMA weights (a run trained with "
                  "config.ema_decay) instead of its raw weights.")
flags.DEFINE_string("name", None, "Split name of the results (JSON folder, TensorBoard); default "
                    "eval_offline, or eval_offline_ema with --ema.")
parallel.define_distributed_flags()
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)  # Orbax warns about every read-only manager.
    parallel.initialize_from_flags()
    from resnet_jax import offline_eval

    request = offline_eval.Request(
        workdir=FLAGS.workdir, step=FLAGS.step, all_steps=FLAGS.all, watch=FLAGS.watch,
        watch_timeout=FLAGS.watch_timeout, poll_seconds=FLAGS.poll_seconds,
        checkpoint=FLAGS.checkpoint, torchvision_weights=FLAGS.torchvision_weights,
        config=FLAGS.config if FLAGS["config"].present else None,
        overrides=FLAGS["config"].override_values, per_class=FLAGS.per_class,
        allow_unverified=FLAGS.allow_unverified_checkpoint, ema=FLAGS.ema, name=FLAGS.name)
    offline_eval.run(request)


if __name__ == "__main__":
    cli.run(main)
