"""`python -m mammosae_jax.sweep`, kept as documented; the command is `mammosae_jax.cli.sweep`."""
import sys

if __name__ == "__main__":
    from mammosae_jax.cli.sweep import main

    sys.exit(main())
