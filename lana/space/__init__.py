"""The search space: which candidate ops may replace a teacher's layer.

``specs`` (the spec grammar: op types, parameters, parsing; no torch), ``ops`` (the
builders behind the specs, shape contracts, register_op), ``inherit`` (candidates
initialised from the teacher layer's weights). Nothing is imported here.
"""
