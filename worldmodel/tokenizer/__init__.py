"""The frame tokenizer: the network, its files and identity, its training (frames, discriminator, resumable
state), evaluation, the encode / decode loop, and `tokenize`."""
