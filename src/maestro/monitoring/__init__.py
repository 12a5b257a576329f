"""Monitoring: how a deployment performs over time, and how served inputs and predictions
move away from what its model was trained on. ``service`` names every monitored quantity
(``quantity``, for the routes and for alert rules); ``folding`` folds logged predictions
into hourly ``profiles`` (mergeable, serialisable sketches of one column over one window);
``ground_truth`` joins labels sent later to logged predictions and keeps their
``quality`` counts per minute; ``reference`` profiles a deployment's reference data once;
``drift`` decides from raw values or from profiles whether a column or a dataset drifted,
and ``reports`` compares a window with the reference, now or as stored history."""
