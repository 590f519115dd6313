"""Reader transports. All of them resume from the same event ids."""
