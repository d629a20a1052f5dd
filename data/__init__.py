"""mmcurate's non-code assets (taxonomy, labeling config, default panel, demo pool).

A regular package only so the files ship in the wheel and are found with
``importlib.resources``; there is no code here. Use ``curate.assets.asset_path``.
"""
