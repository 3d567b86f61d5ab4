"""`python -m mammosae_jax.dashboard`, kept as documented; the command is `mammosae_jax.cli.dashboard`."""
import sys

if __name__ == "__main__":
    from mammosae_jax.cli.dashboard import main

    sys.exit(main())
