"""The ``mirror`` command line: a thin face over the library.

Commands only parse arguments and print; every behaviour lives in a library module.
"""

from __future__ import annotations

import json
import logging
import sys

import click

from mirror import __version__
from mirror.errors import MirrorError

INTERRUPTED = 130  # the shell's code for a run ended by SIGINT; SIGTERM gets it too


class _Group(click.Group):
    """Turns library errors into one clean line and a non-zero exit; an interrupted run
    (Ctrl-C, SIGTERM) into exit 130 with the resume hint."""

    def main(self, *args, **kwargs):
        with _sigterm_interrupts():
            return super().main(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:  # 'mirror --bogus'
            _usage_error(exc)

    def invoke(self, ctx: click.Context):
        try:
            with _warnings_as_lines():
                return super().invoke(ctx)
        except MirrorError as exc:
            _fail(str(exc), exc.exit_code)
        except click.exceptions.NoArgsIsHelpError:  # 'mirror snapshot': its help, as is
            raise
        except click.UsageError as exc:  # a typo'd option or value: one line, as any error
            _usage_error(exc)
        except (KeyboardInterrupt, click.exceptions.Abort) as exc:
            kept = getattr(exc, "files_kept", None) or getattr(exc.__context__, "files_kept",
                                                                None)
            kept_text = f"{kept} file(s) kept; " if kept is not None else ""
            _fail(f"interrupted; {kept_text}run the same command to resume", INTERRUPTED,
                  prefix="")
        except OSError as exc:  # a full, read-only or vanished disk: one line, not a traceback
            where = f" ({exc.filename})" if exc.filename else ""
            _fail(f"{exc.strerror or exc}{where}; check the disk and permissions, then run "
                  "the same command again", 2)
        except _database_errors() as exc:
            _fail(f"the index is damaged ({type(exc).__name__}: {str(exc).splitlines()[0]}"
                  "); rebuild it with 'mirror reindex'", 2)


class _warnings_as_lines:
    """The library's warnings (:class:`~mirror.errors.MirrorWarning`) as one ``warning:``
    line each on stderr, every time, instead of Python's file:line report."""

    def __enter__(self):
        import warnings

        from mirror.errors import MirrorWarning

        self.saved = warnings.catch_warnings()
        self.saved.__enter__()
        warnings.simplefilter("always", MirrorWarning)
        shown = warnings.showwarning

        def show(message, category, *args, **kwargs):
            if not issubclass(category, MirrorWarning):
                return shown(message, category, *args, **kwargs)
            click.echo(f"warning: {' '.join(str(message).split())}", err=True)
        warnings.showwarning = show
        return self

    def __exit__(self, *exc_info) -> None:
        self.saved.__exit__(*exc_info)


def _usage_error(exc: click.UsageError) -> None:
    where = exc.ctx.command_path if exc.ctx is not None else "mirror"
    _fail(f"{exc.format_message().rstrip('.')}; see '{where} --help'", exc.exit_code)


def _fail(message: str, code: int, prefix: str = "error: ") -> None:
    click.echo(f"{prefix}{' '.join(message.split())}", err=True)
    sys.exit(code)


def _database_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    from sqlalchemy.exc import DatabaseError

    return (sqlite3.DatabaseError, DatabaseError)


class _sigterm_interrupts:
    """While a command runs, SIGTERM (systemd, a batch scheduler, ``kill``) stops it like
    Ctrl-C: the lease is released and what arrived is kept, instead of a silent death."""

    def __enter__(self):
        import signal
        import threading

        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, *exc_info) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _password(username: str) -> str:
    """MIRROR_PASSWORD, else a prompt; nothing typed is one clear error, not a loop."""
    import os

    password = os.environ.get("MIRROR_PASSWORD")
    if password:
        return password
    try:
        password = click.prompt(f"Password for {username}", hide_input=True, err=True,
                                default="", show_default=False)
    except click.exceptions.Abort:
        password = ""
    if not password:
        raise MirrorError(f"no password given for {username}; type it at the prompt or set "
                          "MIRROR_PASSWORD")
    return password


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="mirror")
@click.option("-v", "--verbose", count=True, help="-v shows requests, -vv debug.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--progress", "progress_mode", default="auto", show_default=True,
              type=click.Choice(["auto", "bar", "plain", "none"]),
              help="auto: bars on a terminal; plain periodic lines when stderr is not a "
                   "terminal and -v is given; otherwise nothing.")
def main(verbose: int, quiet: bool, progress_mode: str) -> None:
    """Keep a local, offline, verifiable mirror of a medical-imaging archive."""
    from mirror import progress

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    progress.choose(progress_mode, verbose=verbose, quiet=quiet)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--archive", default="isic-v1", show_default=True,
              help="Which archive to imitate (a source name). The options below are ISIC "
                   "v1's; another archive's sandbox takes its own (see docs/sandbox.md).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=0, show_default=True, help="Port; 0 picks a free one.")
@click.option("--images", default=100, show_default=True, help="Number of synthetic images.")
@click.option("--seed", default=0, show_default=True, help="Seed: same seed, same bytes.")
@click.option("--faults", default="", help="Fault spec, e.g. '500=0.05,reset=0.02,429=0.02'.")
@click.option("--private-fraction", default=0.1, show_default=True,
              help="Fraction of images in private datasets (visible only with a token).")
@click.option("--records", type=click.Path(exists=True, dir_okay=False),
              help="Serve image detail records from this JSON(.gz) file.")
@click.option("--segmentations", type=click.Path(exists=True, dir_okay=False),
              help="Serve segmentation detail records from this JSON(.gz) file.")
@click.option("--hostile", is_flag=False, flag_value="all", default=None, metavar="[CASES]",
              help="Serve hostile data (reliability tests): alone, every case; or a comma "
                   "list of names, paging, ids, json, html, length, endless, superpixels, "
                   "redirect.")
@click.option("--latency", default=0.0, show_default=True,
              help="Seconds added to every API response, like a network round trip.")
@click.pass_context
def sandbox(ctx: click.Context, archive: str, **options) -> None:
    """Serve a local imitation of an archive until interrupted (ISIC v1 by default)."""
    import importlib

    from mirror.sources.base import ALIASES, spec_of

    spec = spec_of(archive)
    if spec.sandbox is None:
        raise MirrorError(f"{spec.title} has no sandbox")
    module, function = spec.sandbox.split(":")
    serve = getattr(importlib.import_module(module), function)
    if ALIASES.get(archive, archive) == "isic-v1":
        if ctx.args:
            raise MirrorError(f"unknown sandbox option(s) {' '.join(ctx.args)}; see "
                              "'mirror sandbox --help'")
        serve(**options)
    else:  # that sandbox parses its own options: the ones given here are passed on
        given = [f"--{name.replace('_', '-')}={value}" for name, value in options.items()
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        sys.exit(serve(given + ctx.args) or 0)


def _csv_choice(value: str) -> frozenset[str]:
    return frozenset(v.strip() for v in value.split(",") if v.strip())


def _blobs_of(root: str, blobs: str | None, default: str) -> frozenset[str]:
    """``--blobs``, or the ``default`` choices the mirror's source offers (all its file
    choices when it offers none of them: ISIC v2 has no masks)."""
    if blobs is not None:
        return _csv_choice(blobs)
    from pathlib import Path

    from mirror.config import load_config
    from mirror.sources.base import spec_of

    offered = spec_of(load_config(Path(root)).source).file_options
    return frozenset(b for b in default.split(",") if b in offered) or offered


def _root_option(f):
    return click.option("--root", envvar="MIRROR_ROOT", required=True,
                        type=click.Path(file_okay=False),
                        help="Mirror folder (or set MIRROR_ROOT).")(f)


@main.command()
@_root_option
@click.option("--url", help="Archive API root; remembered in the mirror. Its shape picks the "
              "source (…/api/v1: ISIC v1).")
@click.option("--rebase-url", is_flag=True, help="--url differs from the one the mirror "
              "remembers but is the same archive (it moved); remember the new one.")
@click.option("--source", help="The source of a new mirror (isic-v1, tcia-v4, ...); default: "
              "from --url.")
@click.option("--collection", "collections", multiple=True,
              help="Only this collection (repeatable; ISIC v2: id, TCIA: name).")
@click.option("--search", help="Only images the archive's own search finds (ISIC v2's query "
              "language, passed through), e.g. 'diagnosis_3:\"Melanoma Invasive\"'.")
@click.option("--where", "scope_where", help="IDC: series whose catalog row meets FIELD OP VALUE "
              "[AND ...], e.g. 'collection_id == \"rider_pilot\" AND Modality == \"CT\"'; "
              "TCIA: series whose getSeries row does (files of the others are not fetched).")
@click.option("--sql", "scope_sql", help="IDC: series of one SELECT SeriesInstanceUID FROM "
              "idc_index WHERE ...")
@click.option("--s3-endpoint", help="IDC: the buckets' S3 endpoint (default: public AWS).")
@click.option("--catalog", "catalog_dir", help="IDC: a folder of idc-index-data Parquet files "
              "(default: $MIRROR_IDC_CATALOG, else the installed package).")
@click.option("--workers", default=8, show_default=True, help="Concurrent downloads.")
@click.option("--what", help="Documents to mirror (default: all the source offers; ISIC v1: "
              "images,datasets,segmentations,studies,annotations).")
@click.option("--blobs", help="Files to mirror, '' for metadata only (default: all; ISIC v1: "
              "full,thumbnail,superpixels,masks).")
@click.option("--dataset", help="Only images of this dataset (name or id).")
@click.option("--study", help="Only this study (name or id) and its images.")
@click.option("--limit", type=int, help="Only the first N images (by id).")
@click.option("--username", help="Log in as this user; password from MIRROR_PASSWORD or a prompt.")
@click.option("--allow-mixed", is_flag=True, help="Allow mixing anonymous and logged-in syncs.")
@click.option("--index-url", help="Keep the index in this database (e.g. postgresql://...); "
              "only when creating a mirror.")
@click.option("--wait", "lease_wait", type=float, default=0.0, show_default=True,
              help="Seconds to wait for another writer (-1 waits forever).")
@click.option("--no-space-check", "no_space_check", is_flag=True,
              help="Fetch even when the size estimate says the disk is too small.")
@click.option("--dry-run", is_flag=True, help="Report what changed and the file plan, and "
              "change nothing: the next real run reports the same changes.")
@click.option("--full", is_flag=True, help="Re-check every per-object listing now (ISIC v1: "
              "segmentations), not the share of this run (MIRROR_RECHECK_PERIOD); TCIA: "
              "every patient's live hash, not the collection hash that lags up to a day.")
@click.option("--allow-removals", is_flag=True,
              help="Mark removed what the archive stopped listing, even beyond the guard.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output (as 'mirror -q sync').")
def sync(root, url, rebase_url, source, collections, search, scope_where, scope_sql, s3_endpoint,
         catalog_dir, workers, what, blobs, dataset, study, limit, username, allow_mixed,
         index_url, lease_wait, no_space_check, dry_run, full, allow_removals, as_json,
         quiet) -> None:
    """Create or update a mirror from the archive (incremental, resumable)."""
    from mirror.sync import SyncOptions
    from mirror.sync import sync as run_sync

    password = _password(username) if username else None
    def print_plan(plan: dict) -> None:
        if not as_json and (dry_run or not quiet):
            click.echo(f"plan: {plan['files']} file(s) to fetch, about "
                       f"{plan['estimated_bytes'] / 1e6:.1f} MB; "
                       f"{plan['free_bytes'] / 1e9:.1f} GB free"
                       + (f" (estimate from {plan['basis']})" if plan.get("basis") else ""))

    options = SyncOptions(what=None if what is None else _csv_choice(what),
                          blobs=None if blobs is None else _csv_choice(blobs), workers=workers,
                          dataset=dataset, study=study, limit=limit, dry_run=dry_run,
                          full=full,
                          allow_mixed=allow_mixed, index_url=index_url, source=source,
                          allow_removals=allow_removals, rebase_url=rebase_url,
                          space_check=not no_space_check,
                          scope={**_scope(collections, search),
                                 **{k: v for k, v in (("where", scope_where), ("sql", scope_sql),
                                                      ("s3_endpoint", s3_endpoint),
                                                      ("catalog", catalog_dir)) if v}},
                          lease_wait=None if lease_wait < 0 else lease_wait,
                          on_plan=print_plan)
    if quiet or as_json:
        from mirror import progress

        progress.choose("none")
    summary = run_sync(root, url, options, username=username, password=password)
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2, sort_keys=True))
    else:
        for line in summary.summary_lines():
            click.echo(line)
    sys.exit(0 if summary.ok else 1)


def _scope(collections: tuple[str, ...], search: str | None) -> dict:
    """The source scopes given on the command line (each source reads the ones it knows)."""
    scope: dict = {}
    if collections:
        scope["collection"] = ",".join(collections)
    if search:
        scope["search"] = search
    return scope


def _emit(data: dict, lines: list[str], as_json: bool) -> None:

    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in lines:
            click.echo(line)


@main.command()
@_root_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (loopback by default; 0.0.0.0 serves the network).")
@click.option("--port", default=8000, show_default=True, help="Port; 0 picks a free one.")
@click.option("--workers", default=1, show_default=True, help="Server processes.")
@click.option("--allow-private", is_flag=True,
              help="Serve a mirror synced with a login (non-public objects: token only).")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="File holding the bearer token that may read non-public objects.")
def serve(root, host, port, workers, allow_private, token_file) -> None:
    """Serve the mirror read-only over HTTP: the archive's own API and a browse page."""
    from mirror.serve import run

    run(root, host, port, workers, allow_private, token_file)


@main.command()
@_root_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(root, as_json) -> None:
    """Counts by kind and file role, bytes, last sync and source."""
    from mirror.status import mirror_status, status_lines

    data = mirror_status(root)
    _emit(data, status_lines(data), as_json)


@main.command()
@_root_option
@click.option("--fast", is_flag=True, help="Check existence and size only.")
@click.option("--repair", is_flag=True, help="Fetch bad or missing files again.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def verify(root, fast, repair, as_json) -> None:
    """Re-hash every file and cross-check index and store; exit 1 on any problem."""
    from mirror.verify import needs_repair, repair_mirror, verify_lines, verify_mirror

    report = verify_mirror(root, fast=fast)
    if repair and needs_repair(report):
        report = repair_mirror(root, report)
    _emit(report.as_dict(), verify_lines(report), as_json)
    sys.exit(0 if report.ok else 1)


@main.command()
@_root_option
@click.option("--dry-run", is_flag=True,
              help="List what would be removed and what is kept, and why; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def gc(root, dry_run, as_json) -> None:
    """Remove superseded versions and stray files that no snapshot pins."""
    from mirror.gc import collect_garbage

    data = collect_garbage(root, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {item['path']} ({item['reason']})" for item in data["reasons"]]
    if dry_run:
        lines += [f"would keep {item['path']} ({item['reason']})" for item in data["kept"]]
    lines.append(f"{verb} {len(data['files'])} file(s), {data['bytes'] / 1e6:.1f} MB"
                 + (f"; kept {len(data['kept'])} pinned or recently removed" if data["kept"]
                    else ""))
    _emit(data, lines, as_json)


@main.command()
@_root_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def reindex(root, as_json) -> None:
    """Rebuild the index from the stored documents and files."""
    from mirror.reindex import reindex_mirror

    data = reindex_mirror(root)
    _emit(data, [f"indexed {data['documents']} document(s) and {data['blobs']} file(s); "
                 f"published generation {data['generation']}"], as_json)


def _selection_options(f):
    """--where (repeatable), --dataset, --study, --strict: what the selection commands
    share."""
    f = click.option("--strict", is_flag=True, help="A criterion that can never match (a "
                     "field no object has, a value of the wrong type) is an error, not a "
                     "warning.")(f)
    f = click.option("--study", help="Only images of this study (name or id).")(f)
    f = click.option("--dataset", help="Only images of this dataset (name or id).")(f)
    return click.option("--where", "wheres", multiple=True, metavar="'FIELD OP VALUE'",
                        help="A criterion, e.g. 'meta.clinical.diagnosis == melanoma'; "
                        "repeat to require several (see docs/query.md).")(f)


def _select(root, wheres, dataset, study, limit=None, strict=False):
    from mirror.api import Mirror

    mirror = Mirror(root)
    return mirror, mirror.select_images(list(wheres), dataset=dataset, study=study, limit=limit,
                                        strict=strict)


@main.command()
@_root_option
@_selection_options
@click.option("--kind", default="images", show_default=True,
              help="What to select: images, segmentations, studies, datasets, annotations.")
@click.option("--columns", help="Comma list of dotted fields (default: isic_id, attribution, "
              "license, dataset and every acquisition and clinical field; other kinds: _id, "
              "name).")
@click.option("--format", "fmt", default="table", show_default=True,
              type=click.Choice(["table", "csv", "json", "jsonl", "ids"]))
@click.option("--limit", type=int, help="At most N objects (in _id order).")
@click.option("--count", is_flag=True, help="Print only the number of objects selected.")
def query(root, wheres, dataset, study, strict, kind, columns, fmt, limit, count) -> None:
    """Select images (or other objects) by their metadata, offline, and print them."""
    from mirror.query import check_limit, projection_of, select_ids, select_positions

    check_limit(limit)
    if count:  # the projection alone answers: no index database, no object rows
        projection = projection_of(root)
        try:
            click.echo(select_positions(projection, list(wheres), dataset, study, limit,
                                        kind, strict)[1].size)
        finally:
            projection.close()
        return
    from mirror.api import Mirror
    from mirror.export import formatted, metadata_table, object_table

    if kind in ("images", "image"):
        mirror, selection = _select(root, wheres, dataset, study, limit, strict)
        ids = selection.ids
        header, rows = metadata_table(mirror, selection, _csv_list(columns))
    else:
        mirror = Mirror(root)
        ids = select_ids(mirror.projection, list(wheres), dataset, study, limit, kind, strict)
        header, rows = object_table(mirror, kind, ids, _csv_list(columns))
    for piece in formatted(header, rows, fmt, ids=ids):
        click.echo(piece, nl=False)


@main.command()
@_root_option
@click.argument("statement")
@click.option("--format", "fmt", default="table", show_default=True,
              type=click.Choice(["table", "csv", "json", "jsonl", "ids"]))
def sql(root, statement, fmt) -> None:
    """Run one read-only SQL STATEMENT over the query projections (tables: images,
    segmentations, studies, datasets, annotations, study_images; fields are quoted columns,
    e.g. "meta.clinical.diagnosis"). See docs/query.md."""
    from mirror.export import formatted
    from mirror.query import plain, projection_of, run_sql

    projection = projection_of(root)
    try:
        header, rows = run_sql(projection, statement)
    finally:
        projection.close()
    rows = [[plain(v) for v in row] for row in rows]
    ids = [row[0] for row in rows] if fmt == "ids" and header else None
    for piece in formatted(header, iter(rows), fmt, ids=ids):
        click.echo(piece, nl=False)


@main.command()
@_root_option
@click.argument("kind", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def fields(root, kind, as_json) -> None:
    """Every field path of KIND's documents (default: every kind) with its types, how many
    objects have it and its most common values: what --where and --columns can name."""
    from mirror.fields import describe_fields, fields_lines

    data = describe_fields(root, kind)
    _emit(data, fields_lines(data), as_json)


@main.command()
@_root_option
@click.argument("group", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def names(root, group, as_json) -> None:
    """The datasets, studies or collections the mirror holds (GROUP: one of them), each
    with its id, name and object count: what --dataset, --study, --collection take."""
    from mirror.fields import group_names, names_lines

    data = group_names(root, group)
    _emit(data, names_lines(data), as_json)


def _csv_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@main.group()
def export() -> None:
    """Write a metadata table or a folder of files for a selection."""


@export.command("metadata")
@_root_option
@click.argument("out", type=click.Path(dir_okay=False))
@_selection_options
@click.option("--columns", help="Comma list of dotted fields instead of the default columns.")
@click.option("--replace", is_flag=True, help="Overwrite OUT (and its attribution file).")
def export_metadata_command(root, out, wheres, dataset, study, strict, columns,
                            replace) -> None:
    """Write OUT.csv or OUT.parquet (one row per image) and OUT.attribution.txt beside it."""
    from mirror.export import export_metadata

    mirror, selection = _select(root, wheres, dataset, study, strict=strict)
    data = export_metadata(mirror, out, selection, _csv_list(columns), replace=replace)
    click.echo(f"wrote {data['images']} {data.get('unit', 'image(s)')} x {data['columns']} "
               f"column(s) to {out}"
               + (f", attribution in {data['attribution']}" if data.get("attribution") else ""))


@export.command("files")
@_root_option
@click.argument("dest", type=click.Path(file_okay=False))
@_selection_options
@click.option("--link", default="hard", show_default=True,
              type=click.Choice(["hard", "sym", "copy"]),
              help="How files get into DEST (hard links share the store's read-only bytes).")
@click.option("--blobs", help="Files per image (default: full,masks; ISIC v2: full): full, "
              "thumbnail, superpixels, masks.")
@click.option("--replace", is_flag=True, help="DEST holds an older export: swap it for this "
              "one atomically (otherwise a non-empty DEST is refused).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def export_files_command(root, dest, wheres, dataset, study, strict, link, blobs, replace,
                         as_json) -> None:
    """DEST/<name>.jpg (masks and superpixels beside), metadata.csv, attribution.txt."""
    from mirror.export import export_files, export_files_lines

    mirror, selection = _select(root, wheres, dataset, study, strict=strict)
    data = export_files(mirror, dest, selection, sorted(_blobs_of(root, blobs, "full,masks")),
                        link, replace=replace)
    _emit(data, export_files_lines(mirror, data, dest), as_json)
    sys.exit(1 if data["missing"] or data["skipped_names"] else 0)


@main.group()
def snapshot() -> None:
    """Pin, export, rebuild and verify reproducible snapshots."""


@snapshot.command("create")
@_root_option
@click.argument("name")
@_selection_options
@click.option("--blobs", help="Files to pin per image (default: full,masks,superpixels; "
              "ISIC v2: full): full, thumbnail, superpixels, masks.")
def snapshot_create(root, name, wheres, dataset, study, strict, blobs) -> None:
    """Pin the current versions of the selected images as snapshot NAME."""
    from mirror.snapshots import create_snapshot

    snap = create_snapshot(root, name, list(wheres), dataset, study,
                           tuple(sorted(_blobs_of(root, blobs, "full,masks,superpixels"))),
                           strict=strict)
    files = sum(len(o.get("files", [])) for o in snap.objects)
    click.echo(f"snapshot {name}: {len(snap.of_kind('image'))} image(s), "
               f"{len(snap.objects)} document(s), {files} file(s); "
               f"id {snap.manifest['snapshot_id'][:16]}")


@snapshot.command("delete")
@_root_option
@click.argument("name")
def snapshot_delete(root, name) -> None:
    """Unpin snapshot NAME; the files it pinned go only through 'mirror gc'."""
    from mirror.snapshots import delete_snapshot

    data = delete_snapshot(root, name)
    click.echo(f"deleted snapshot {name} (id {data['snapshot_id'][:16]}, {data['objects']} "
               "pinned object(s)); 'mirror gc' removes the files nothing else needs")


@snapshot.command("list")
@_root_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def snapshot_list(root, as_json) -> None:
    """Every snapshot of the mirror, oldest first."""
    from mirror.snapshots import list_snapshots

    rows = list_snapshots(root)
    _emit({"snapshots": rows}, [f"{r['name']}\t{r['created']}\t{r['images']} image(s)\t"
                                f"{r['files']} file(s)\t{r['snapshot_id'][:16]}" for r in rows]
          or ["no snapshots"], as_json)


@snapshot.command("show")
@_root_option
@click.argument("name")
def snapshot_show(root, name) -> None:
    """Print the manifest of NAME (the file docs/snapshots.md describes)."""
    from mirror.snapshots import open_snapshot

    click.echo(json.dumps(open_snapshot(root, name).manifest, indent=2, sort_keys=True))


@snapshot.command("diff")
@_root_option
@click.argument("first")
@click.argument("second")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def snapshot_diff(root, first, second, as_json) -> None:
    """Objects added, removed and changed (with the metadata fields that changed)."""
    from mirror.snapshots import diff_lines, diff_snapshots

    data = diff_snapshots(root, first, second)
    _emit(data, diff_lines(data), as_json)


@snapshot.command("export")
@_root_option
@click.argument("name")
@click.argument("dest", type=click.Path())
@click.option("--format", "fmt", default="dir", show_default=True,
              type=click.Choice(["dir", "tar", "bagit"]))
def snapshot_export(root, name, dest, fmt) -> None:
    """Write NAME as a self-contained dataset at DEST, byte-identical on every run."""
    from mirror.snapshots import export

    data = export(root, name, dest, fmt)
    click.echo(f"exported {data['files']} file(s), {data['bytes'] / 1e6:.1f} MB, to "
               f"{data['path']} ({fmt})")
    if data.get("renamed"):
        click.echo(f"{len(data['renamed'])} file(s) share a name with another object's: "
                   "each is named <name>_<id> (e.g. "
                   f"{data['renamed'][0]})")


@snapshot.command("verify")
@_root_option
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def snapshot_verify(root, name, as_json) -> None:
    """Re-hash everything NAME pins; exit 1 if anything is missing or damaged."""
    from mirror.snapshots import verify_snapshot

    data = verify_snapshot(root, name)
    lines = data["problems"] + [f"{name}: {data['checked']} pinned item(s) verified, "
                                f"{len(data['problems'])} problem(s)"]
    _emit(data, lines, as_json)
    sys.exit(0 if data["ok"] else 1)


@snapshot.command("build")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@_root_option
@click.option("--url", help="Archive API root (default: the one in the manifest).")
@click.option("--rebase-url", is_flag=True, help="ROOT already mirrors this archive at "
              "another address; remember --url.")
@click.option("--username", help="Log in as this user; password from MIRROR_PASSWORD or a prompt.")
@click.option("--workers", default=8, show_default=True, help="Concurrent downloads.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def snapshot_build(manifest, root, url, rebase_url, username, workers, as_json) -> None:
    """Fetch exactly what MANIFEST pins into a mirror and check every hash."""
    from mirror.snapshots.build import build_snapshot

    password = _password(username) if username else None
    data = build_snapshot(manifest, root, url, username, password, workers, rebase_url)
    lines = [f"changed: {c}" for c in data["changed"]] + [f"gone: {g}" for g in data["gone"]]
    lines.append(f"{data['name']}: {data['verified']} pinned item(s) verified, "
                 f"{len(data['changed'])} changed, {len(data['gone'])} gone"
                 + ("; registered in the mirror" if data["ok"] else ""))
    _emit(data, lines, as_json)
    sys.exit(0 if data["ok"] else 1)


@main.group()
def lock() -> None:
    """Inspect or break the writer lease."""


@lock.command("status")
@_root_option
def lock_status(root) -> None:
    """Show who holds the writer lease."""
    from mirror.config import layout_for, load_config
    from mirror.lease import holder_is_stale, lease_holder

    layout = layout_for(root, load_config(root))
    holder = lease_holder(layout)
    if holder is None:
        click.echo("no writer")
        return
    line = "held by pid {pid} on {host} ({command}) since {started}".format(**holder)
    stale = holder_is_stale(layout, holder)
    if stale:
        line = (f"stale: {line}, but {stale}; the next writer takes it over (or run "
                "'mirror lock break')")
    click.echo(line)


@lock.command("break")
@_root_option
def lock_break(root) -> None:
    """Remove the writer lease of a writer that is known to be dead."""
    from mirror.config import layout_for, load_config
    from mirror.lease import break_lease

    broken = break_lease(layout_for(root, load_config(root)))
    click.echo("lease broken" if broken else "no lease to break")


if __name__ == "__main__":
    main()
