"""Lesions of a model.

``vocabulary``  elements, methods, modes, condition kinds, control labels, size formulas
``masks``       ``Lesion``, ``IndexMask``, ``apply_lesion``, ``random_like``, save / load
``importance``  importance scores per language and selections (shared / specific)
``plan``        ``LesionPlan``, ``ConditionSpec``, ``Condition``, ``LesionBuilder``
"""
