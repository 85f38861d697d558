"""Runs `train_and_evaluate` in a child process for the resume, SIGTERM and
multi-process tests.

  python tests/train_driver.py WORKDIR STEPS [--kill-after N] [--out params.npz]
      [--checkpoint-every N] [--log-every N]

With DISTILLSPEC_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID set it joins a
multi-process job (jax.distributed over gloo) first.
"""

import argparse
import os
import signal
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.chdir(REPO)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("steps", type=int)
    parser.add_argument("--kill-after", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--log-every", type=int, default=1)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    import jax
    import numpy as np

    from configs import tiny
    from distillspec_jax import checkpoints, train

    if os.environ.get("DISTILLSPEC_COORDINATOR"):
        train.initialize_multihost()
    if args.kill_after:
        original = checkpoints.Checkpointer.save

        def save_then_die(self, step, *a, **kw):
            saved = original(self, step, *a, **kw)
            if step == args.kill_after:
                self.wait()
                os.kill(os.getpid(), signal.SIGKILL)  # No clean exit.
            return saved

        checkpoints.Checkpointer.save = save_then_die
    config = tiny.get_config()
    config.num_train_steps = args.steps
    config.checkpoint_every = args.checkpoint_every
    config.log_every = args.log_every
    config.eval_every = 0
    config.eval_batches = 1
    result = train.train_and_evaluate(config, args.workdir, progress=False)
    if args.out:
        leaves = jax.tree_util.tree_leaves_with_path(result["state"].params)
        local = {jax.tree_util.keystr(p): np.asarray(x.addressable_data(0)) for p, x in leaves}
        np.savez(args.out, step=result["step"], **local)
    print("finished step", result["step"], "preempted", result["preempted"], flush=True)


if __name__ == "__main__":
    main()
