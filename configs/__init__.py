"""The packaged YAML configs, one per application, found by name (``--config bow_echo``)."""
