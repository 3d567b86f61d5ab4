"""`python -m mammosae_jax.intervene`, kept as documented; the command is `mammosae_jax.cli.intervene`."""
import sys

if __name__ == "__main__":
    from mammosae_jax.cli.intervene import main

    sys.exit(main())
