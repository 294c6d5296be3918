"""The item-vector ownership protocol: one writer per item, every worker a reader."""
