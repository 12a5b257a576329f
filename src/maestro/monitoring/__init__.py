"""Monitoring: how served inputs and predictions move away from what a model was trained on.
``profiles`` summarises one column over one window in mergeable, serialisable sketches;
``drift`` decides from raw values or from those profiles whether a column or a dataset drifted."""
