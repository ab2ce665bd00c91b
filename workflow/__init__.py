"""The configured pipeline: a config file checked in full against every stage's Params (config)."""
