r"""`python -m distillspec_jax.main`: the study's command under its first name.

  python -m distillspec_jax.main --workdir DIR [--config configs/default.py[:quick]]

The study itself is `distillspec_jax.study`; this module only runs its command line.
"""

from distillspec_jax.study import main

if __name__ == "__main__":
    main()
