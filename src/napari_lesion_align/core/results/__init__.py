"""What a run leaves on disk.

``result``   ``AlignmentResult``: maps, group maps, categories, tables, result.json
``figures``  the QC figure, bar groups
"""
