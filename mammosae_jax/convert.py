"""`python -m mammosae_jax.convert`, kept as documented; the command is `mammosae_jax.cli.convert`."""
import sys

if __name__ == "__main__":
    from mammosae_jax.cli.convert import main

    sys.exit(main())
