"""Interpretable k-sparse autoencoders on Fashion-MNIST: the implementation behind ``ksae_helpers``."""
