"""`python -m mammosae_jax.evaluate`, kept as documented; the command is `mammosae_jax.cli.evaluate`."""
import sys

if __name__ == "__main__":
    from mammosae_jax.cli.evaluate import main

    sys.exit(main())
