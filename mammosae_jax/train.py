"""`python -m mammosae_jax.train`, kept as documented; the command is `mammosae_jax.cli.train`."""
import sys

if __name__ == "__main__":
    from mammosae_jax.cli.train import main

    sys.exit(main())
