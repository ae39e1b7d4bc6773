"""Lesions of a model.

``vocabulary``  elements, methods, modes, condition kinds, control labels, size formulas
``masks``       ``Lesion``, ``IndexMask``, ``apply_lesion``, ``random_like``, save / load
``importance``  importance scores per language and selections (shared / specific)
``scores``      where scores live: in memory, or on disk one tensor at a time (large models)
``plan``        ``LesionPlan``, ``ConditionSpec``, ``Condition``, ``LesionBuilder``
"""
