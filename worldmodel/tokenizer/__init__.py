"""The frame tokenizer: the model, its training and resumable state, evaluation, and `tokenize`."""
