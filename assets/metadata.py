"""Small helpers that turn results into Dagster metadata a person can read in the UI."""

from collections.abc import Mapping, Sequence

from dagster import MetadataValue


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> MetadataValue:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return MetadataValue.md("\n".join(lines))


def counts_table(title: str, counts: Mapping[str, int], value_header: str = "count") -> MetadataValue:
    return markdown_table([title, value_header], sorted(counts.items(), key=lambda item: -item[1]))


def bullet_list(items: Sequence[str], limit: int = 50) -> MetadataValue:
    shown = [f"- {item}" for item in items[:limit]]
    if len(items) > limit:
        shown.append(f"- ... and {len(items) - limit} more")
    return MetadataValue.md("\n".join(shown) or "(none)")


def one_line(lead: str, items: Sequence[str], limit: int = 20) -> str:
    """``lead: a; b; c; and N more``: many warnings as one log line (one event-log write, not one each)."""
    more = len(items) - limit
    return f"{lead}: " + "; ".join(items[:limit]) + (f"; and {more} more" if more > 0 else "")
