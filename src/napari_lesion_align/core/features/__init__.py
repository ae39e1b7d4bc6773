"""Word features of a model.

``extraction``  tokenisation with word offsets, windows, extraction, TR resampling, FIR delays
"""
