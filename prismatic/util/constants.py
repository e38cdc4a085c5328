"""Constants shared across layers."""

# Label of positions that carry no loss (prompt, padding, visual tokens): the ignore index of torch's cross-entropy and
# of transformers' causal-LM loss.
IGNORE_INDEX = -100
