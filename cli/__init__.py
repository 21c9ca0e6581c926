"""The ``facepipeline`` command: the pipeline for people and scripts, on the persistent Dagster instance."""
