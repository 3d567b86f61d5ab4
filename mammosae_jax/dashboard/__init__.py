"""The latent dashboard: one self-contained HTML page per run (`build` collects, `page` writes;
the command is `mammosae_jax.cli.dashboard`)."""
