"""Train a ResNet: python train.py --config configs/X.py --workdir DIR [--config.field=value ...]

The same command resumes from the latest checkpoint in DIR, and runs unchanged on every host of a
multi-host job (start-up from the flags below or from the environment: SLURM, TPU pods).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import parallel

config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
flags.DEFINE_bool("dry_run", False, "Print the validated config, model summary and schedule; exit.")
flags.DEFINE_bool("allow_unverified_checkpoint", False,
                  "Resume from the newest checkpoint even when its integrity record is missing or "
                  "unreadable (damaged checkpoints are still set aside).")
flags.DEFINE_bool("start_fresh_if_no_good_checkpoint", False,
                  "When the workdir has checkpoints but none verifies, set them aside and train "
                  "from step 0 (default: stop with a message).")
parallel.define_distributed_flags()
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
    parallel.initialize_from_flags()
    from resnet_jax import training
    from resnet_jax.experiment import build_experiment

    if FLAGS.dry_run:
        print(training.dry_run_report(build_experiment(FLAGS.config)))
        return
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required (or use --dry_run)")
    training.train_and_evaluate(
        FLAGS.config, FLAGS.workdir, allow_unverified_checkpoint=FLAGS.allow_unverified_checkpoint,
        start_fresh_if_no_good_checkpoint=FLAGS.start_fresh_if_no_good_checkpoint)


if __name__ == "__main__":
    app.run(main)
