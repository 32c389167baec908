"""The ``recommend`` command: top-N columns for a stored row or for new item/value pairs.

Registered on the ``streamsvd`` Typer app when ``streamsvd.cli`` imports this module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from streamsvd.cli import StoreArg, _errors_to_exit, app, console
from streamsvd.errors import ConfigError, InvalidInputError


def parse_items(text: str, *, source: str = "--items") -> dict[str, float]:
    """``ID=VALUE,ID=VALUE`` (or one ``ID=VALUE`` / ``ID,VALUE`` per line) as a dict.

    A first line ``col_id,value`` (a header) is skipped. Ids stay strings here; they
    are converted to the store's id kind by :func:`streamsvd.recommendation.recommend`.

    Examples
    --------
    >>> parse_items("a=1,b=2.5")
    {'a': 1.0, 'b': 2.5}
    """
    items: dict[str, float] = {}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0].replace(" ", "").lower() == "col_id,value":
        lines = lines[1:]
    parts = [p.strip() for line in lines for p in (line.split(",") if "=" in line else [line])]
    for part in parts:
        if not part:
            continue
        key, sep, value = part.partition("=") if "=" in part else part.partition(",")
        try:
            if not sep or not key.strip():
                raise ValueError
            items[key.strip()] = float(value)
        except ValueError:
            raise InvalidInputError(
                f"{source}: {part!r} is not ID=VALUE (for example 42=5 or item7=1.0)"
            ) from None
    return items


@app.command()
def recommend(
    store: StoreArg,
    row: Annotated[
        str | None, typer.Option("--row", help="A stored row id: PureSVD scores U_i·S·Vᵀ.")
    ] = None,
    items: Annotated[
        str | None,
        typer.Option("--items", help="A new row as ID=VALUE,ID=VALUE: fold-in scores x·V·Vᵀ."),
    ] = None,
    items_file: Annotated[
        Path | None,
        typer.Option("--items-file", help="Like --items, one ID=VALUE or ID,VALUE per line."),
    ] = None,
    top: Annotated[int, typer.Option("--top", help="How many columns to return.")] = 10,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print [{"id": …, "score": …}, …].')
    ] = False,
    version: Annotated[str | None, typer.Option(help="A version id (default: newest).")] = None,
) -> None:
    """Top-N columns (items) of a sparse store for a stored row or new item/value pairs.

    Items the row has already seen are excluded; ids are the original column ids.
    """
    from streamsvd.recommendation import recommend as run_recommend

    with _errors_to_exit():
        given = [x is not None for x in (row, items, items_file)]
        if sum(given) != 1:
            raise ConfigError("give exactly one of --row, --items or --items-file")
        pairs = None
        if items is not None:
            pairs = parse_items(items)
        elif items_file is not None:
            try:
                text = items_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise InvalidInputError(f"--items-file {items_file}: {exc.strerror}") from None
            pairs = parse_items(text, source=str(items_file))
        result = run_recommend(store, row=row, items=pairs, top=top, version=version)
    if as_json:
        sys.stdout.write(json.dumps([{"id": i, "score": s} for i, s in result]) + "\n")
        return
    table = Table("rank", "id", "score")
    for position, (ident, score) in enumerate(result, start=1):
        table.add_row(str(position), str(ident), f"{score:.6g}")
    console.print(table)
