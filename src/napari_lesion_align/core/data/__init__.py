"""The data: what was heard and what was measured.

``languages``  ``is_spaceless``, language tags
``stimuli``    ``Words``; TextGrid, CSV / TSV and events.tsv readers
``bold``       ``VolumeSpace``, ``RegionSpace``, confounds, cleaning
``options``    the data options of a config: ``DataConfig``, ``LanguageData``, ``BidsSource``,
               ``DemoConfig``
``bids``       a BIDS dataset indexed into per-language tables
``dataset``    ``Dataset``, ``BoldRun``: the files of a config, read on demand
``demo``       the demo's shipped data, recipe and seeded BOLD generator (planted truth)
"""
