"""Bundled weights (importable as ``derain_cli.weights_dir``); see ``manifest.json``."""
