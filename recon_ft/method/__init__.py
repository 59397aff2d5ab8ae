"""The method's maths: the four losses, the joint objective that combines them, the vocabulary bridge
between the two models' tokenizers, and the cache of frozen computations the objective reuses."""
