"""Expected failures become Dagster ``Failure``s: a clear message in the UI, no stack trace."""

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import Failure

from facepipeline.errors import FacePipelineError


@contextmanager
def failures_explained() -> Iterator[None]:
    try:
        yield
    except FacePipelineError as exc:
        raise Failure(description=f"{type(exc).__name__}: {exc}") from None
