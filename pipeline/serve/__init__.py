"""Servers: the MLflow UI on the project's store (ui.py), a tracking server on PostgreSQL
(server.py, postgres.py), a registered model over HTTP (model.py), a request for it
(request.py). Each binds to 127.0.0.1 unless told otherwise and stops whole."""
