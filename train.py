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
    training.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
