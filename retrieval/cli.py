"""The ``retrieval`` command line."""
from __future__ import annotations

import json
import logging
import os
import sys

import click

from .errors import RetrievalError

DEFAULT_MODEL, DEFAULT_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"


def _size(text: str) -> int:
    """Parse '4GB', '512MiB', '1e9' into bytes."""
    t = text.strip().upper().replace("IB", "B")
    for suffix, mult in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20), ("KB", 2**10), ("B", 1)):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(float(t))


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RetrievalError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: committed shards are kept; re-run the same command to resume", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """CLIP retrieval engine: build sharded FAISS indexes over image-text corpora; search (clip, BSAP, BSAP-H,
    NNN), classify with X-MoRe, evaluate, and serve them over HTTP."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("corpus", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Index folder to write (e.g. indexes/NAME); re-run to resume.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="open_clip arch, 'local-dir:FOLDER', or a folder holding open_clip_config.json.")
@click.option("--pretrained", default=DEFAULT_PRETRAINED, show_default=True,
              help="Pretrained tag (hub), a local .safetensors/.pt file, or 'random'. Ignored for local folders.")
@click.option("--batch-size", default=64, show_default=True, help="Images per model forward.")
@click.option("--shard-size", default=100_000, show_default=True, help="Rows per shard (one faiss index each).")
@click.option("--index-key", default=None, help="faiss factory string for every shard (default: chosen per shard).")
@click.option("--memory-budget", default="4GB", show_default=True, help="Memory budget of one shard's index, e.g. 4GB.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--workers", default=min(4, os.cpu_count() or 1), show_default=True,
              help="DataLoader workers that read and decode images (0 = in the main process).")
@click.option("--image-root", default=None, type=click.Path(), help="Manifest only: folder its image paths are relative to.")
@click.option("--image-column", default=None, help="Manifest only: image-path column (auto-detected).")
@click.option("--caption-column", default=None, help="Manifest only: caption column (auto-detected).")
@click.option("--key-column", default=None, help="Manifest only: unique key column (default: 'key' if present, else the image path).")
@click.option("--max-pixels", default=89_478_485, show_default=True, help="Skip images with more pixels (decompression bombs).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(corpus, out, model, pretrained, batch_size, shard_size, index_key, memory_budget, device, workers,
          image_root, image_column, caption_column, key_column, max_pixels, quiet):
    """Embed CORPUS with open_clip and write a sharded index folder.

    CORPUS is a folder of images with same-stem .txt captions (and optional .json metadata), a
    .parquet/.csv/.tsv manifest (image-path + caption columns), a WebDataset .tar, or a folder of .tar.
    """
    from .build import build_index

    if batch_size <= 0 or shard_size <= 0:
        raise click.BadParameter("--batch-size and --shard-size must be positive")
    try:
        budget = _size(memory_budget)
    except ValueError:
        raise click.BadParameter(f"{memory_budget!r} is not a size such as 4GB or 512MB",
                                 param_hint="--memory-budget") from None
    m = build_index(corpus, out, model, pretrained, batch_size=batch_size, shard_size=shard_size,
                    index_key=index_key, memory_budget=budget, device=device, workers=workers,
                    image_root=image_root, image_column=image_column, caption_column=caption_column,
                    key_column=key_column, max_pixels=max_pixels, progress=not quiet)
    c, st = m["counts"], m.get("stats", {})
    click.echo(f"built {c['rows']} items in {len(m['shards'])} shards from {c['inputs']} inputs "
               f"(skipped {c['skipped']}, repaired {c['repaired']}) in {st.get('elapsed_s', 0):.1f} s "
               f"[{st.get('rows_per_s') or 0:.1f} items/s] -> {out}")


@main.command()
@click.argument("index", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(index, as_json):
    """Show an index folder: counts, model, shards, index types, sizes, skipped items."""
    from .info import format_info, index_info

    data = index_info(index)
    click.echo(json.dumps(data, indent=2) if as_json else format_info(data))


def _load_for(index: str):
    """Load the model an index was built with (its manifest's identity)."""
    from .manifest import load_manifest
    from .models import load_model
    from .errors import IndexFolderError

    m = load_manifest(index)
    if m is None:
        raise IndexFolderError(f"{index} is not an index folder (no manifest.json)")
    ident = m["model"]
    arch = ident["arch"]
    if arch.startswith("local-dir:"):
        return load_model(arch)
    return load_model(arch, ident.get("weights_path") or ident.get("pretrained"), seed=ident.get("seed", 0))


@main.command()
@click.argument("index", type=click.Path())
@click.argument("text", required=False)
@click.option("--image", "image", type=click.Path(), help="Search with an image file instead of text.")
@click.option("--k", default=20, show_default=True, help="Results per query.")
@click.option("--target", type=click.Choice(["image", "text"]), default="image", show_default=True,
              help="Search among the corpus images or its captions.")
@click.option("--rerank", type=click.Choice(["clip", "bsap", "hybrid", "nnn"]), default="clip", show_default=True,
              help="clip cosine; bsap/nnn exact over the whole corpus; hybrid over --candidates.")
@click.option("--candidates", type=int, default=None, help="Rerank CLIP's top N instead of searching exactly.")
@click.option("--lam", default=0.5, show_default=True, help="BSAP-H weight of the CLIP softmax.")
@click.option("--alpha", default=0.75, show_default=True, help="NNN bias weight.")
@click.option("--backend", type=click.Choice(["auto", "faiss-cpu", "faiss-gpu", "torch"]), default="auto",
              show_default=True, help="auto: faiss-gpu if faiss has GPUs, torch if CUDA, else faiss-cpu.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def search(index, text, image, k, target, rerank, candidates, lam, alpha, backend, as_json):
    """Search INDEX with TEXT (or --image PATH) and print the top-k rows."""
    from .search import open_index

    if (text is None) == (image is None):
        raise click.UsageError("give a TEXT or --image PATH (one of them)")
    if k <= 0:
        raise click.BadParameter("must be positive", param_hint="--k")
    if text is not None and not text.strip():
        raise click.BadParameter("the query text is empty", param_hint="TEXT")
    if image is not None and not os.path.isfile(image):
        raise click.BadParameter(f"{image} is not a file", param_hint="--image")
    try:
        idx = open_index(index, _load_for(index), backend=backend)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--backend") from None
    try:
        rows = idx.query(text=text, image=image, k=k, target=target, rerank=rerank, candidates=candidates,
                         lam=lam, alpha=alpha)[0]
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, ensure_ascii=False, default=str))
        return
    click.echo(f"{'rank':>4}  {'score':>8}  {'id':>7}  {'key':<30}  caption")
    for i, r in enumerate(rows, 1):
        click.echo(f"{i:>4}  {r['score']:8.4f}  {r['id']:>7}  {str(r['key'])[:30]:<30}  {str(r['caption'])[:80]}")


@main.command()
@click.argument("index", type=click.Path())
@click.option("--bank", type=click.Choice(["generic", "corpus", "texts"]), default="generic", show_default=True,
              help="BSAP auxiliary prompts: built-in list, sampled corpus captions, or --text values.")
@click.option("--text", "texts", multiple=True, help="An auxiliary prompt (repeatable; with --bank texts).")
@click.option("--bank-size", default=64, show_default=True, help="Sampled rows for --bank corpus.")
@click.option("--nnn-k", default=128, show_default=True, help="NNN: top-k reference similarities averaged.")
@click.option("--ref-size", default=4096, show_default=True, help="NNN: reference queries sampled from the corpus.")
def bias(index, bank, texts, bank_size, nnn_k, ref_size):
    """Recompute INDEX's bias/ offsets for exact BSAP/NNN search (no re-embedding)."""
    from .bias import compute_biases

    clip = _load_for(index) if bank in ("generic", "texts") else None
    try:
        sec = compute_biases(index, clip, bank=bank, bank_texts=list(texts), bank_size=bank_size, nnn_k=nnn_k,
                             ref_size=ref_size)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    click.echo(f"bias/ recomputed in {sec['seconds']:.1f} s: bank={sec['bank']} ({sec['bank_rows']['image']} prompts), "
               f"nnn_k={sec['nnn_k']}, tau={sec['tau']:.2f}")


def _classifier(index: str, classes_file, labels_file, templates, neighbours: int, captions: int):
    """(Classifier, labelled paths or None, labels or None) from the CLI options."""
    from .classify import Classifier, check_classes, read_classes, read_labels
    from .search import open_index

    try:
        paths = labels = None
        if labels_file:
            paths, labels = read_labels(labels_file)
        if classes_file:
            classes = read_classes(classes_file)
        elif labels is not None:
            classes = check_classes(sorted(set(labels)))
        else:
            raise click.UsageError("give --classes FILE or --labels FILE")
        if labels is not None:
            unknown = sorted(set(labels) - set(classes))
            if unknown:
                raise ValueError(f"labels not among the classes: {', '.join(unknown[:5])}")
        clf = Classifier(open_index(index, _load_for(index)), classes, templates or ("a photo of a {}.",),
                         neighbours=neighbours, captions=captions)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return clf, paths, labels


_CLASSIFY_OPTIONS = [
    click.option("--classes", "classes_file", type=click.Path(), help="Class names, one per line."),
    click.option("--labels", "labels_file", type=click.Path(),
                 help="CSV with path,label (paths relative to it); its images and labels (classes = its labels "
                      "unless --classes)."),
    click.option("--template", "templates", multiple=True,
                 help="Prompt template with {} (repeatable; averaged). Default: 'a photo of a {}.'"),
    click.option("--neighbours", default=128, show_default=True, help="R: image neighbours retrieved per image."),
    click.option("--captions", default=16, show_default=True, help="K: their captions kept (most similar to the image)."),
    click.option("--batch-size", default=64, show_default=True, help="Images per model forward."),
    click.option("--json", "as_json", is_flag=True, help="JSON instead of a table."),
]


def _with(options):
    def deco(f):
        for o in reversed(options):
            f = o(f)
        return f
    return deco


@main.command()
@click.argument("index", type=click.Path())
@click.argument("images", nargs=-1, type=click.Path())
@_with(_CLASSIFY_OPTIONS)
@click.option("--method", type=click.Choice(["xmore", "image", "caption", "fixed"]), default="xmore", show_default=True,
              help="xmore: entropy-weighted mix; image: zero-shot CLIP; caption: captions only; fixed: 0.5/0.5.")
@click.option("--normalise", type=click.Choice(["batch", "stream"]), default="batch", show_default=True,
              help="Confidence weights divided by their means over the images (batch) or running sums (official stream).")
@click.option("--calibration", "calibration", multiple=True, type=click.Path(),
              help="Images or folders whose mean confidences normalise the weights (instead of the batch's).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar (stderr).")
def classify(index, images, classes_file, labels_file, templates, neighbours, captions, batch_size, as_json,
             method, normalise, calibration, progress):
    """Classify IMAGES (files or folders) with X-MoRe over INDEX's captions."""
    from .classify import expand_images

    clf, lab_paths, labels = _classifier(index, classes_file, labels_file, templates, neighbours, captions)
    try:
        paths = expand_images(images) if images else lab_paths
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="IMAGES") from None
    if not paths:
        raise click.UsageError("no images: give IMAGE_OR_FOLDER arguments or --labels FILE")
    errors: list = []
    means = None
    if calibration:
        if normalise == "stream":
            raise click.UsageError("--calibration applies to --normalise batch")
        try:
            means = clf.calibration_means(expand_images(calibration), batch_size, errors)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--calibration") from None
    results = clf.classify(paths, method, normalise, batch_size, progress and not as_json, errors, means)
    truth = {str(p): lab for p, lab in zip(lab_paths or [], labels or [])}
    for p, why in errors:
        click.echo(f"skipped {p}: {why}", err=True)
    if as_json:
        for r in results:
            click.echo(json.dumps({**r.as_dict(), **({"truth": truth[r.path]} if r.path in truth else {})}, ensure_ascii=False))
    else:
        top = lambda t: ", ".join(f"{c} {p:.2f}" for c, p in t)  # noqa: E731
        for r in results:
            click.echo(f"{r.path}\n  -> {r.label}  (w_img {r.w_img:.2f}, w_cap {r.w_cap:.2f})"
                       + (f"  truth {truth[r.path]}" if r.path in truth else "")
                       + f"\n     image: {top(r.image_top)}"
                       + (f"\n     captions: {top(r.caption_top)}" if r.caption_top else ""))
    if truth and results:
        acc = sum(r.label == truth[r.path] for r in results) / len(results)
        click.echo(f"accuracy {acc:.4f} on {len(results)} images ({len(errors)} skipped)", err=True)
    else:
        click.echo(f"classified {len(results)} images ({len(errors)} skipped)", err=True)
    if not results:
        raise click.ClickException(f"none of the {len(paths)} images could be read")


@main.command(name="eval")
@click.argument("index", type=click.Path())
@_with(_CLASSIFY_OPTIONS)
@click.option("--max-queries", type=int, default=None, help="Retrieval: a seeded sample of this many rows (default all).")
@click.option("--seed", default=0, show_default=True, help="Seed of the query sample and of the stream order.")
@click.option("--no-retrieval", is_flag=True, help="Skip the retrieval table.")
def evaluate(index, classes_file, labels_file, templates, neighbours, captions, batch_size, as_json, max_queries,
             seed, no_retrieval):
    """Measure INDEX: retrieval recall per rerank method; with --labels, zero-shot vs X-MoRe accuracy."""
    from .evaluate import eval_classification, eval_retrieval, format_table
    from .search import open_index

    out: dict = {}
    if not no_retrieval:
        idx = open_index(index, _load_for(index))
        out["retrieval"] = eval_retrieval(idx, max_queries=max_queries, seed=seed)
    if labels_file:
        clf, paths, labels = _classifier(index, classes_file, labels_file, templates, neighbours, captions)
        try:
            out["classification"], out["classification_summary"] = eval_classification(
                clf, paths, labels, batch_size, progress=not as_json, seed=seed)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    elif classes_file:
        raise click.UsageError("--classes needs --labels (the labelled images to classify)")
    if not out:
        raise click.UsageError("nothing to do: drop --no-retrieval or give --labels")
    if as_json:
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    if "retrieval" in out:
        click.echo(format_table(out["retrieval"], f"Retrieval recall on {index} (own image-caption pairs)"))
    if "classification" in out:
        s = out["classification_summary"]
        click.echo(format_table(out["classification"], f"\nClassification of {s['images']} images "
                                f"({s['skipped']} skipped), {s['classes']} classes, R={s['neighbours']}, K={s['captions']}"))


@main.command()
@click.argument("indexes", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless told otherwise).")
@click.option("--port", default=8000, show_default=True)
@click.option("--max-batch", default=64, show_default=True, help="Most search requests run as one batch.")
@click.option("--max-wait-ms", default=4.0, show_default=True, help="Longest wait for a batch to fill.")
@click.option("--max-body", default="16MB", show_default=True, help="Largest request body (bigger: 413).")
@click.option("--backend", type=click.Choice(["auto", "faiss-cpu", "faiss-gpu", "torch"]), default="auto", show_default=True)
def serve(indexes, host, port, max_batch, max_wait_ms, max_body, backend):
    """Serve INDEXES ([NAME=]FOLDER ...) over HTTP: API, OpenAPI docs at /docs, web page at /."""
    import uvicorn

    from .search import open_index
    from .server import create_app

    opened = {}
    for spec in indexes:
        name, _, folder = spec.rpartition("=") if "=" in spec else (os.path.basename(os.path.normpath(spec)), "", spec)
        if name in opened:
            raise click.BadParameter(f"two indexes named {name!r}; use NAME=FOLDER", param_hint="INDEXES")
        opened[name] = open_index(folder, _load_for(folder), backend=backend)
    app = create_app(opened, max_batch=max_batch, max_wait_ms=max_wait_ms, max_body=_size(max_body))
    click.echo(f"serving {', '.join(f'{n} ({len(i)} rows)' for n, i in opened.items())} on http://{host}:{port}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
