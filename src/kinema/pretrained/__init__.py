"""Package data only: the shipped models' folders (config.toml, fp16 EMA weights, state.json).

`kinema.checkpoint` resolves their names (`kinema sample moving-digits`) and writes such folders (`export_weights`);
docs/pretrained.md records the commands behind each one.
"""
