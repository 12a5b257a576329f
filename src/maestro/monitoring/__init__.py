"""Monitoring: how a deployment performs over time, and how served inputs and predictions
move away from what its model was trained on. ``service`` names every monitored quantity
(``quantity``, for the routes and for alert rules); ``folding`` folds logged predictions
into hourly ``profiles`` (mergeable, serialisable sketches of one column over one window);
``drift`` decides from raw values or from those profiles whether a column or a dataset
drifted."""
