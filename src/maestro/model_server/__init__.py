"""The standalone model server (``maestro model-server``): loaded models answering over
Maestro's routes, the Open Inference Protocol and MLflow's scoring protocol."""
