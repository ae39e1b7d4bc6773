"""Statistics over fitted maps.

``statistics``    ``delta``, ``alignment_test``, ``paired_t``, ``categories``, ``lpi``, colours
``controls``      the nulls and baselines of ``[controls]``
``display``       how each statistic is shown (label, colour kind, threshold rule)
``plausibility``  the warning for an implausible intact map
``ceiling``       noise ceilings: inter-subject reliability and alignment normalised by it
``inference``     group inference by sign-flip permutations (max-t, TFCE, cluster; FWE)
"""
