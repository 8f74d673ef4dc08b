"""Release manifests: one TOML per known release, and the module that loads and validates them."""
