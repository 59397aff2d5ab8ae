"""Experiments built on the training and evaluation layers: the benchmark, the cycle study, the
captioner x generator pairs, the t_max probe, the comparison with diffusers' example, sweep summaries."""
