"""What every layer needs: errors, the config schema's building blocks, file io.

``errors``  ``LesionAlignError``, ``Cancelled``, ``WriteFailed``, ``UnitFailed``
``schema``  frozen pydantic tables and strict types; ``explain``
``io``      ``regular_file`` / ``read_bytes`` / ``read_text``, atomic writes, ``cache_dir``,
            ``file_identity``, ``check_label``, ``resolve_path``
"""
