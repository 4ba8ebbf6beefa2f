"""A toy world of small rendered buildings with known attributes, to train and judge tiny models on a CPU."""
