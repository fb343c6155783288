"""Train a ResNet: python train.py --config configs/X.py --workdir DIR [--config.field=value ...]

The same command resumes from the latest checkpoint in DIR, and runs unchanged on every process of a
multi-host job: JAX finds SLURM, Open MPI, Kubernetes and Cloud TPU pods by itself; elsewhere give
--coordinator_address, --num_processes and --process_id.
"""

from absl import flags

from resnet_jax import cli, parallel
from resnet_jax.errors import UserError

cli.define_config_flag("configs/default.py", "Experiment config file.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
flags.DEFINE_bool("dry_run", False, "Print the validated config, model summary and schedule, and "
                  "exit; needs no dataset (cifar10, cifar100 and imagenet2012 use their published "
                  "split sizes when not prepared).")
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
    if not FLAGS.dry_run and not FLAGS.workdir:
        raise UserError("--workdir is required (or use --dry_run)")
    parallel.initialize_from_flags()
    from resnet_jax import console, plan, training

    if FLAGS.dry_run:
        print(console.dry_run_report(plan.plan_run(FLAGS.config)))
        return
    training.train_and_evaluate(
        FLAGS.config, FLAGS.workdir, allow_unverified_checkpoint=FLAGS.allow_unverified_checkpoint,
        start_fresh_if_no_good_checkpoint=FLAGS.start_fresh_if_no_good_checkpoint)


if __name__ == "__main__":
    cli.run(main)
