"""D2IM-Net-style single-view reconstruction: model, data over shards, training CLI, inference."""
