"""Registrations of the compressed families' zoo names, one module per family (no torch at import).

Every module in this package is imported by `edgeattack.zoo.catalog`, so a family registers its
names by calling `register_model` at module level here, with "module:function" targets that are
imported only when a model is built.
"""
