"""Train a ResNet: python -m resnet_jax.train_command --config FILE.py --workdir DIR
[--config.field=value ...]

The command behind the repository's train.py (which gives --config the default
configs/default.py), runnable wherever resnet_jax is installed; here --config is required, since
the config files are not part of the package. The same command resumes from the latest checkpoint
in DIR, and runs unchanged on every process of a multi-host job: JAX finds SLURM, Open MPI,
Kubernetes and Cloud TPU pods by itself; elsewhere give --coordinator_address, --num_processes and
--process_id.
"""

from typing import Optional

from absl import flags

from resnet_jax import cli, parallel
from resnet_jax.errors import UserError

FLAGS = flags.FLAGS


def define_flags(default_config: Optional[str] = None) -> None:
    """The command's flags; --config defaults to the file `default_config` (None: required)."""
    cli.define_config_flag(default_config, "Experiment config file.")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
    flags.DEFINE_bool("dry_run", False, "Print the validated config, model summary and schedule, "
                      "and exit; needs no dataset (cifar10, cifar100 and imagenet2012 use their "
                      "published split sizes when not prepared).")
    flags.DEFINE_bool("allow_unverified_checkpoint", False,
                      "Resume from the newest checkpoint even when its integrity record is missing "
                      "or unreadable (damaged checkpoints are still set aside).")
    flags.DEFINE_bool("start_fresh_if_no_good_checkpoint", False,
                      "When no checkpoint in the workdir verifies and one is damaged or has an "
                      "unreadable record, set them aside and train from step 0 (default: stop "
                      "with a message). Checkpoints whose saves were only cut short (no record) "
                      "are set aside and the run starts from step 0 without this flag.")
    parallel.define_distributed_flags()


def main(argv) -> None:
    """Train (or, with --dry_run, plan) the run the flags of define_flags describe."""
    del argv
    if FLAGS.config is None:
        raise UserError("--config is required: an experiment config file, e.g. the repository's "
                        "configs/default.py")
    if not FLAGS.dry_run and not FLAGS.workdir:
        raise UserError("--workdir is required (or use --dry_run)")
    parallel.initialize_from_flags()
    from resnet_jax import compiled_memory, console, plan, pretrained, training

    if FLAGS.dry_run:  # with the preprocessing an init_from source brings, as the run would
        config, _ = pretrained.with_source_preprocessing(FLAGS.config,
                                                         pretrained.open_source(FLAGS.config))
        run_plan = plan.plan_run(config)
        memory = compiled_memory.planned_train_step_memory(config, run_plan)
        print(console.dry_run_report(run_plan, memory))
        return
    training.train_and_evaluate(
        FLAGS.config, FLAGS.workdir, allow_unverified_checkpoint=FLAGS.allow_unverified_checkpoint,
        start_fresh_if_no_good_checkpoint=FLAGS.start_fresh_if_no_good_checkpoint)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
