"""``retrieval build``, ``info`` and ``bias``: write and inspect index folders."""
from __future__ import annotations

import json
import os

import click

from .common import DEFAULT_MODEL, DEFAULT_PRETRAINED, NON_NEGATIVE, POSITIVE, Finite, Size


@click.command()
@click.argument("corpus", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Index folder to write (e.g. indexes/NAME); re-run to resume.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="open_clip arch, 'local-dir:FOLDER', or a folder holding open_clip_config.json.")
@click.option("--pretrained", default=DEFAULT_PRETRAINED, show_default=True,
              help="Pretrained tag (hub), a local .safetensors/.pt file, or 'random'. Ignored for local folders.")
@click.option("--batch-size", type=POSITIVE, default=64, show_default=True, help="Images per model forward.")
@click.option("--shard-size", type=POSITIVE, default=100_000, show_default=True, help="Rows per shard (one faiss index each).")
@click.option("--index-key", default=None, help="faiss factory string for every shard (default: chosen per shard).")
@click.option("--memory-budget", type=Size(), default="4GB", show_default=True, help="Memory budget of the whole index (every shard; fp16 vectors a compressed index re-scores from are memory-mapped, not counted), e.g. 4GB.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--workers", type=NON_NEGATIVE, default=min(4, os.cpu_count() or 1), show_default=True,
              help="DataLoader workers that read and decode images (0 = in the main process).")
@click.option("--image-root", default=None, type=click.Path(), help="Manifest only: folder its image paths are relative to.")
@click.option("--image-column", default=None, help="Manifest only: image-path column (auto-detected).")
@click.option("--caption-column", default=None, help="Manifest only: caption column (auto-detected).")
@click.option("--key-column", default=None, help="Manifest only: unique key column (default: 'key' if present, else the image path).")
@click.option("--max-pixels", type=POSITIVE, default=89_478_485, show_default=True,
              help="Skip images with more pixels (decompression bombs).")
@click.option("--require-captions", is_flag=True,
              help="Skip (and log) items without a caption instead of indexing them image-only.")
@click.option("--modalities", default="image,text", show_default=True,
              help="Indexes to build: image (text->image, image->image) and text (search among captions; built "
                   "only where captions exist). 'image' halves the footprint of a captioned corpus.")
@click.option("--text-columns", default=None, metavar="C1,C2",
              help="Metadata columns keyword search (--text-match) reads besides the captions, e.g. title,tags; "
                   "fixed at the first build.")
@click.option("--regions", is_flag=True,
              help="Also store ComCLIP's regions of every image (see `retrieval regions`): comclip queries then "
                   "skip region proposals; later syncs keep them up to date.")
@click.option("--bias-later", is_flag=True,
              help="Return as soon as the index is searchable (plain CLIP, keyword); its BSAP/NNN offsets stay "
                   "pending until `retrieval bias INDEX` or a rerun without this flag. By default the build "
                   "publishes the searchable index, then the offsets.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Embed on Ray actors (pip install '.[ray]'): alone, a local cluster on this machine; with an "
                   "address (auto, ray://host:10001), that cluster. One actor per GPU, else per CPU.")
@click.option("--ray-actors", type=POSITIVE, default=None, help="With --ray: number of embedding actors.")
def build(corpus, out, model, pretrained, batch_size, shard_size, index_key, memory_budget, device, workers,
          image_root, image_column, caption_column, key_column, max_pixels, require_captions, modalities, text_columns,
          regions, bias_later, quiet, ray_address, ray_actors):
    """Embed CORPUS with open_clip and write a sharded index folder; on an existing folder, sync it.

    CORPUS is a folder of images (same-stem .txt captions and .json metadata optional), a
    .parquet/.csv/.tsv manifest (image-path + caption columns), a WebDataset .tar, or a folder of .tar.
    Re-running the same command resumes a killed build, and on a complete index brings it in step
    with the corpus: new items appended, changed ones replaced, vanished ones deleted. With the model
    on the CPU in float32, its text tower is cached for `retrieval search` ($RETRIEVAL_CACHE_DIR).
    """
    from ..ops import build_index

    from ..ops.build import check_modalities

    try:
        wanted = check_modalities([m.strip() for m in modalities.split(",") if m.strip()])
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--modalities") from None
    if ray_address is not None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise click.UsageError("--ray needs Ray: pip install '.[ray]'") from None
    elif ray_actors is not None:
        raise click.UsageError("--ray-actors needs --ray")
    report: list = []
    m = build_index(corpus, out, model, pretrained, batch_size=batch_size, shard_size=shard_size,
                    index_key=index_key, memory_budget=memory_budget, device=device, workers=workers,
                    image_root=image_root, image_column=image_column, caption_column=caption_column,
                    key_column=key_column, max_pixels=max_pixels, progress=not quiet,
                    require_captions=require_captions, modalities=wanted, report=report, ray=ray_address,
                    ray_actors=ray_actors,
                    text_columns=[c.strip() for c in text_columns.split(",") if c.strip()] if text_columns else None,
                    regions=regions, bias_later=bias_later, warm_text_cache=True)
    c, st, run = m["counts"], m.get("stats", {}), report[0]
    if m.get("bias_pending"):
        click.echo(f"searchable now; BSAP/NNN offsets pending: `retrieval bias {out} --bank "
                   f"{m['bias_pending'].get('bank')}` (or this command without --bias-later) computes them")
    if run.first_build:
        click.echo(f"built {c['live']} items ({c['captionless']} without a caption) in {len(m['shards'])} shards "
                   f"from {c['inputs']} inputs (skipped {c['skipped']}, repaired {c['repaired']}) in "
                   f"{st.get('elapsed_s', 0):.1f} s [{st.get('rows_per_s') or 0:.1f} items/s] -> {out}")
    else:
        held = f", {run.held} held (deleted by you; `retrieval delete --restore KEY` brings one back)" if run.held else ""
        click.echo(f"{run.line()}, {run.unchanged} unchanged, {run.skipped} skipped{held} -> {out} "
                   f"({c['live']} items)")


@click.command()
@click.argument("index", type=click.Path())
@click.argument("keys", nargs=-1)
@click.option("--keys-file", type=click.Path(exists=True, dir_okay=False),
              help="A file of keys, one per line.")
@click.option("--restore", is_flag=True,
              help="Undo: release the keys, and make each one's newest row live again unless compact reclaimed it "
                   "(then the next build sync re-embeds it).")
def delete(index, keys, keys_file, restore):
    """Delete items of INDEX by KEY (tombstones, published atomically; `retrieval compact` reclaims space).

    A deleted key stays deleted: re-running `retrieval build` over a corpus that still has its file does
    not bring it back (a takedown holds) until `retrieval delete INDEX --restore KEY`.
    """
    from ..store.held import delete_keys, restore_keys

    keys = list(keys)
    if keys_file:
        with open(keys_file, encoding="utf-8") as f:
            keys += [line.strip() for line in f if line.strip()]
    if not keys:
        raise click.UsageError("give KEY arguments or --keys-file FILE")
    if restore:
        got = restore_keys(index, keys)
        click.echo(f"restored {len(got.restored)} ({got.revived} live again now), not deleted {len(got.not_held)}"
                   + (f" (e.g. {got.not_held[0]!r})" if got.not_held else ""))
        return
    found = delete_keys(index, keys)
    click.echo(f"deleted {len(found.found)}, already deleted {len(found.deleted)}, not found {len(found.missing)}"
               + (f" (e.g. {found.missing[0]!r})" if found.missing else ""))


@click.command()
@click.argument("index", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(index, as_json):
    """Show an index folder: counts, model, shards, index types, sizes, skipped items."""
    from ..store import format_info, index_info

    data = index_info(index)
    click.echo(json.dumps(data, indent=2) if as_json else format_info(data))


@click.command()
@click.argument("index", type=click.Path())
@click.option("--bank", type=click.Choice(["generic", "corpus", "texts"]), default="generic", show_default=True,
              help="BSAP auxiliary prompts: built-in list, sampled corpus captions, or --text values.")
@click.option("--text", "texts", multiple=True, help="An auxiliary prompt (repeatable; with --bank texts).")
@click.option("--bank-size", type=POSITIVE, default=4096, show_default=True,
              help="Sampled rows for --bank corpus (and the image bank of text targets).")
@click.option("--nnn-k", type=POSITIVE, default=16, show_default=True, help="NNN: top-k reference similarities averaged.")
@click.option("--ref-size", type=POSITIVE, default=4096, show_default=True, help="NNN: reference queries sampled from the corpus.")
@click.option("--calibrate-pairs", type=click.IntRange(min=0), default=1000, show_default=True,
              help="BSAP-H: image-caption pairs sampled to choose its lambda per direction (0: fixed defaults).")
@click.option("--offsets-precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Matmul math of the offsets: bf16 (centred rows: within 1.3e-4 of fp32 on real ViT-B/32 "
                   "embeddings; ~2x faster at 200k items on CPUs with AMX or AVX512-BF16), fp32, or auto "
                   "(bf16 where the CPU has it; env RETRIEVAL_OFFSETS_PRECISION overrides auto).")
def bias(index, bank, texts, bank_size, nnn_k, ref_size, calibrate_pairs, offsets_precision):
    """Recompute INDEX's bias/ offsets for exact BSAP/NNN search (no re-embedding).

    A merged index (`retrieval merge`) is merged again over the rewritten shards in the same publish.
    """
    from ..ops import compute_biases
    from ..store.manifest import recorded_model

    clip = recorded_model(index) if bank in ("generic", "texts") else None
    try:
        sec = compute_biases(index, clip, bank=bank, bank_texts=list(texts), bank_size=bank_size, nnn_k=nnn_k,
                             ref_size=ref_size, calibrate=calibrate_pairs, precision=offsets_precision)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    lam = sec.get("lam")
    lam = (f", BSAP-H lambda from {sec['calibration']['pairs']} pairs: image {lam['image']}, text {lam['text']}"
           if lam else "")
    click.echo(f"bias/ recomputed in {sec['seconds']:.1f} s: bank={sec['bank']} ({sec['bank_rows']['image']} prompts), "
               f"nnn_k={sec['nnn_k']}, tau={sec['tau']:.2f}, {sec['precision']} math{lam}"
               + (f"; merged again: {sec['merged_again']}" if sec.get("merged_again") else ""))


@click.command()
@click.argument("index", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify(index, as_json):
    """Check every byte of INDEX against its manifest (size and sha256 of every file it lists).

    Prints one line per bad file and exits 1 if there is any. Opening an index already checks every
    file's size and a sampled fingerprint; this reads everything.
    """
    from ..store.integrity import verify as full_verify
    from ..store.manifest import require_manifest

    res = full_verify(index, require_manifest(index, allow_old=True))
    rate = res.bytes / 2**30 / res.seconds if res.seconds > 0 else 0.0
    if as_json:
        click.echo(json.dumps({"ok": res.ok, "problems": [{"file": f, "problem": p} for f, p in res.problems],
                               "files": res.files, "bytes": res.bytes, "seconds": round(res.seconds, 3),
                               "gib_per_s": round(rate, 3)}))
    else:
        for rel, why in res.problems:
            click.echo(f"{os.path.join(index, rel)}: {why}")
        click.echo(f"{'ok' if res.ok else f'{len(res.problems)} bad file(s)'}: {res.files} files, "
                   f"{res.bytes / 2**30:.2f} GiB checked in {res.seconds:.1f} s ({rate:.2f} GiB/s)",
                   err=not res.ok)
    if not res.ok:
        raise SystemExit(1)


@click.command()
@click.argument("index", type=click.Path())
@click.option("--threshold", type=Finite(0.0, 0.99), default=0.2, show_default=True,
              help="Rewrite shards with more than this fraction of deleted rows.")
@click.option("--min-rows", type=POSITIVE, default=None,
              help="Merge shards with fewer live rows than this (default: a quarter of the shard size).")
def compact(index, threshold, min_rows):
    """Reclaim deleted rows of INDEX and merge small shards (no re-embedding; rewritten items get new ids).

    A merged index (`retrieval merge`) is merged again over the new shards and any appended since, in
    the same publish (also when no shard needs rewriting).
    """
    from ..ops import compact as run

    click.echo(run(index, threshold, min_rows).line())
