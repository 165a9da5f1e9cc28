"""Ray Tune sweeps of `rayfed fl` and `rayfed sisa`: YAML sweep files -> Tuner, trainables, sweep tables.

- `spec`: reads, overrides and validates a sweep file (no Ray needed).
- `resources`: the placement group each trial reserves for the actors it starts.
- `trainables`: thin Tune wrappers around the same run functions as the CLI.
- `sweep`: `rayfed sweep FILE`.
- `plots`: the sweep's figures.
"""
