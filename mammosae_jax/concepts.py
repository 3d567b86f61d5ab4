"""`python -m mammosae_jax.concepts`, kept as documented; the command is `mammosae_jax.cli.concepts`."""
import sys

if __name__ == "__main__":
    from mammosae_jax.cli.concepts import main

    sys.exit(main())
