"""The bottom layer: the vocabulary that adapters, strategies and the daemon share.

Modules here import nothing of ours; everything else may import them.
"""
