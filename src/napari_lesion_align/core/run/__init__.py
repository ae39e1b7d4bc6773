"""Running an analysis.

``config``       ``AnalysisConfig`` and its sections; TOML / JSON parsing
``store``        ``FeatureStore``, ``OutputFolder``, ``identity``
``engine``       ``Engine``, ``Progress``, ``ConditionSet``: what the stages share
``demo_source``  ``DemoDataset``: the demo as a data source
``sources``      ``open_source``: the data source of a config
``stages``       the stages and their units
``checks``       ``check_inputs``: the checks before a run claims its folder
``executor``     ``InProcess``, ``DaskExecutor``
``pipeline``     ``run_analysis``
"""
