"""SAE training: state and step, resampling, sharding, data, checkpoints and the loop.

One job per module: `config` (TrainConfig), `state` (TrainState + init), `step` (the jitted
train step), `resample` (relu dead-latent resampling), `mesh` (the only place that decides
sharding), `data` (token sources, patient split, prefetching), `checkpoint` (orbax),
`validate` (held-out metrics), `run_files` (config.json, metrics.jsonl), `loop` (the trainer),
`stacked` + `sweep_loop` (many SAEs as vmap-ed stacks, reusing the trainer's plain functions),
`sweep_setup` (a sweep's members and concept scores), `sweep_report` (its table and Pareto front).
"""
