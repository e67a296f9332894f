"""``retrieval classify`` and ``retrieval eval``."""
from __future__ import annotations

import json

import click

from ..methods.xmore import METHODS as XMORE_METHODS

from .common import NON_NEGATIVE, POSITIVE, Template, with_options


def _classifier(index: str, classes_file, labels_file, templates, neighbours: int, captions: int, classes=None):
    """(Classifier, labelled paths or None, labels or None) from the CLI options."""
    from ..classify import Classifier, check_classes, read_classes, read_labels
    from ..query import open_index

    try:
        paths = labels = None
        if labels_file:
            paths, labels = read_labels(labels_file)
        if classes is not None:
            classes = check_classes(classes)
        elif classes_file:
            classes = read_classes(classes_file)
        elif labels is not None:
            classes = check_classes(sorted(set(labels)))
        else:
            raise click.UsageError("give --classes FILE or --labels FILE")
        if labels is not None:
            unknown = sorted(set(labels) - set(classes))
            if unknown:
                raise ValueError(f"labels not among the classes: {', '.join(unknown[:5])}")
        clf = Classifier(open_index(index, "auto"), classes, templates or ("a photo of a {}.",),
                         neighbours=neighbours, captions=captions)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return clf, paths, labels


_CLASSIFY_OPTIONS = [
    click.option("--classes", "classes_file", type=click.Path(), help="Class names, one per line."),
    click.option("--labels", "labels_file", type=click.Path(),
                 help="CSV with path,label (paths relative to it); its images and labels (classes = its labels "
                      "unless --classes)."),
    click.option("--template", "templates", multiple=True, type=Template(),
                 help="Prompt template with {} (repeatable; averaged). Default: 'a photo of a {}.'"),
    click.option("--neighbours", type=POSITIVE, default=128, show_default=True, help="R: image neighbours retrieved per image."),
    click.option("--captions", type=POSITIVE, default=16, show_default=True, help="K: their captions kept (most similar to the image)."),
    click.option("--batch-size", type=POSITIVE, default=64, show_default=True, help="Images per model forward."),
    click.option("--json", "as_json", is_flag=True, help="JSON instead of a table."),
]


@click.command()
@click.argument("index", type=click.Path())
@click.argument("images", nargs=-1, type=click.Path())
@with_options(_CLASSIFY_OPTIONS)
@click.option("--method", type=click.Choice(XMORE_METHODS), default="xmore", show_default=True,
              help="xmore: entropy-weighted mix; image: zero-shot CLIP; caption: captions only; fixed: 0.5/0.5.")
@click.option("--normalise", type=click.Choice(["batch", "stream"]), default="batch", show_default=True,
              help="Confidence weights divided by their means over the images (batch) or running sums (official stream).")
@click.option("--calibration", "calibration", multiple=True, type=click.Path(),
              help="Images or folders whose mean confidences normalise the weights (instead of the batch's).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar (stderr).")
@click.option("--support", "support_file", type=click.Path(),
              help="CSV with path,label of labelled support images: few-shot GDA (zero-shot + a discriminant "
                   "fitted on them, its weight by cross-validation) instead of X-MoRe.")
@click.option("--support-from-index", "support_m", type=POSITIVE, default=None,
              help="Name-only GDA: each class prompt retrieves its top M images from INDEX (exact NNN) as a "
                   "pseudo-labelled support set; no labelled image needed.")
def classify(index, images, classes_file, labels_file, templates, neighbours, captions, batch_size, as_json,
             method, normalise, calibration, progress, support_file, support_m):
    """Classify IMAGES (files or folders) with X-MoRe over INDEX's captions, with few-shot GDA from a
    labelled --support set, or with GDA on images INDEX retrieves for each class (--support-from-index)."""
    from ..classify import expand_images

    if support_file and support_m:
        raise click.UsageError("give --support or --support-from-index, not both")
    given = None
    if support_file and not classes_file and not labels_file:  # the classes: the support's labels
        from ..classify import read_labels

        try:
            given = sorted(set(read_labels(support_file)[1]))
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--support") from None
    clf, lab_paths, labels = _classifier(index, classes_file, labels_file, templates, neighbours, captions, given)
    try:
        paths = expand_images(images) if images else lab_paths
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="IMAGES") from None
    if not paths:
        raise click.UsageError("no images: give IMAGE_OR_FOLDER arguments or --labels FILE")
    errors: list = []
    if support_file or support_m:
        gda = _fit_support(clf, support_file, support_m, batch_size, errors)
        _fewshot(clf, gda, paths, lab_paths, labels, batch_size, as_json, progress, errors)
        return
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


@click.command(name="eval")
@click.argument("index", type=click.Path())
@with_options(_CLASSIFY_OPTIONS)
@click.option("--max-queries", type=POSITIVE, default=None, help="Retrieval: a seeded sample of this many rows (default all).")
@click.option("--comclip", is_flag=True,
              help="Retrieval: also ComCLIP (text→image; reranks CLIP's top 10 of each caption from the images, "
                   "about a second per query on CPU: use --max-queries; needs the index's model and image files).")
@click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True, help="Seed of the query sample and of the stream order.")
@click.option("--no-retrieval", is_flag=True, help="Skip the retrieval table.")
@click.option("--label-column", default=None,
              help="Retrieval: a result is relevant when this metadata column equals the query's (e.g. a class).")
@click.option("--queries", "queries_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Retrieval: query embeddings (.npy [n, d]) instead of the index's own rows; needs --query-labels.")
@click.option("--query-labels", "query_labels_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Labels of --queries (.npy, or a text file with one per line), matched to --label-column.")
@click.option("--query-target", type=click.Choice(["image", "text"]), default="image", show_default=True,
              help="Which items --queries search.")
@click.option("--k", "ks", default="1,5,10", show_default=True, help="Comma-separated k of the recall columns.")
@click.option("--plot", "plot_file", type=click.Path(), default=None,
              help="Draw recall@k curves per method: out.png (matplotlib) or out.html (plotly).")
def evaluate(index, classes_file, labels_file, templates, neighbours, captions, batch_size, as_json, max_queries,
             comclip, seed, no_retrieval, label_column, queries_file, query_labels_file, query_target, ks, plot_file):
    """Measure INDEX: retrieval recall per rerank method; with --labels, zero-shot vs X-MoRe accuracy.

    The retrieval table needs no model (stored embeddings only), so it also runs on indexes built from
    embeddings alone (build_from_embeddings, retrieval import).
    """
    from ..classify import eval_classification, eval_retrieval, format_table
    from ..query import open_index

    try:
        k_list = sorted({int(k) for k in ks.split(",") if k.strip()})
        if not k_list or k_list[0] < 1:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"want positive integers like 1,5,10, got {ks!r}", param_hint="--k") from None
    queries = _queries(queries_file, query_labels_file, query_target)
    out: dict = {}
    if not no_retrieval:
        from ..methods.rerank import METHODS

        idx = open_index(index, "auto" if comclip else None)
        try:
            out["retrieval"] = eval_retrieval(idx, k_list, max_queries=max_queries, seed=seed,
                                              label_column=label_column, queries=queries,
                                              methods=METHODS + (("comclip",) if comclip else ()))
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
        if plot_file:
            from ..classify.plot import plot_curves

            click.echo(f"wrote {plot_curves(out['retrieval'], plot_file, f'retrieval recall on {index}')}", err=True)
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


def _fit_support(clf, support_file, support_m, batch_size, errors):
    """The GDA classifier from a labelled support CSV or from the index's top ``support_m`` per class."""
    from ..classify import read_labels
    from ..classify.fewshot import fit_retrieved, fit_support

    if support_m:
        try:
            gda, sup = fit_retrieved(clf, support_m)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--support-from-index") from None
        click.echo(f"GDA on {len(sup.ids)} images retrieved from the index ({support_m} per class, {sup.rerank}; "
                   f"{len(set(sup.labels.tolist()))} of {len(clf.classes)} classes found): alpha {gda.alpha:.3g}, "
                   f"kappa {gda.kappa:g}", err=True)
        return gda
    try:
        sup_paths, sup_labels = read_labels(support_file)
        gda = fit_support(clf, sup_paths, sup_labels, batch_size, errors)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--support") from None
    click.echo(f"GDA on {len(sup_paths) - len(errors)} support images: alpha {gda.alpha:.3g}, kappa {gda.kappa:g}"
               + (f", cross-validated accuracy {gda.cv_accuracy:.3f}" if gda.cv_accuracy is not None else ""), err=True)
    return gda


def _fewshot(clf, gda, paths, lab_paths, labels, batch_size, as_json, progress, errors) -> None:
    from ..classify.fewshot import classify_fewshot

    n_support_errors = len(errors)
    results = classify_fewshot(clf, gda, paths, batch_size, progress and not as_json, errors)
    truth = {str(p): lab for p, lab in zip(lab_paths or [], labels or [])}
    for p, why in errors:
        click.echo(f"skipped {p}: {why}", err=True)
    for r in results:
        if as_json:
            click.echo(json.dumps({**r.as_dict(), **({"truth": truth[r.path]} if r.path in truth else {})}, ensure_ascii=False))
        else:
            click.echo(f"{r.path}\n  -> {r.label}" + (f"  truth {truth[r.path]}" if r.path in truth else "")
                       + "\n     " + ", ".join(f"{c} {p:.2f}" for c, p in r.top))
    skipped = len(errors) - n_support_errors
    if truth and results:
        acc = sum(r.label == truth[r.path] for r in results) / len(results)
        click.echo(f"accuracy {acc:.4f} on {len(results)} images ({skipped} skipped)", err=True)
    if not results:
        raise click.ClickException(f"none of the {len(paths)} images could be read")


def _queries(queries_file, labels_file, target):
    """(embeddings, labels, target) from --queries/--query-labels, or None."""
    import numpy as np

    if (queries_file is None) != (labels_file is None):
        raise click.UsageError("--queries and --query-labels go together")
    if queries_file is None:
        return None
    try:
        emb = np.load(queries_file)
        labels = (np.load(labels_file, allow_pickle=False) if labels_file.endswith(".npy")
                  else [line.strip() for line in open(labels_file, encoding="utf-8") if line.strip()])
    except (OSError, ValueError) as e:
        raise click.BadParameter(f"cannot read the queries: {e}") from None
    if emb.ndim != 2 or not np.isfinite(emb).all():
        raise click.BadParameter(f"--queries must be a finite 2-D array, got shape {emb.shape}")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if (norms == 0).any():
        raise click.BadParameter("--queries has an all-zero row")
    return (emb / norms).astype(np.float32), list(labels), target
