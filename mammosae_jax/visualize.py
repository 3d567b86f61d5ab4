"""`python -m mammosae_jax.visualize`, kept as documented; the command is `mammosae_jax.cli.visualize`."""
import sys

if __name__ == "__main__":
    from mammosae_jax.cli.visualize import main

    sys.exit(main())
