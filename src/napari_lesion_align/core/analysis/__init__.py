"""Statistics over fitted maps.

``statistics``    ``delta``, ``alignment_test``, ``paired_t``, ``categories``, ``lpi``, colours
``controls``      the nulls and baselines of ``[controls]``
``display``       how each statistic is shown (label, colour kind, threshold rule)
``plausibility``  the warning for an implausible intact map
"""
