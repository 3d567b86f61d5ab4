"""SAE training: state and step, resampling, sharding, data, checkpoints and the loop.

One job per module: `config` (TrainConfig), `state` (TrainState + init), `step` (the jitted
train step), `resample` (relu dead-latent resampling), `mesh` (the only place that decides
sharding), `data` (token sources, patient split, prefetching), `checkpoint` (orbax),
`validate` (held-out metrics), `loop` (the epoch loop the CLI runs).
"""
