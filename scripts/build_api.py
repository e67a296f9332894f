"""Build an index from Python and query it (copy and adapt)."""
import sys

from retrieval import build_index, load_model, open_index

corpus, out = sys.argv[1], sys.argv[2]          # e.g. /data/photos indexes/photos
clip = load_model("ViT-B-32", "laion2b_s34b_b79k")  # or load_model("/models/my-clip-folder")
manifest = build_index(corpus, out, clip=clip, shard_size=100_000, batch_size=128, workers=4)
print(manifest["counts"])
index = open_index(out, clip)
for hit in index.search_text(["a dog on a beach"], k=5)[0]:
    print(f"{hit['score']:.3f} {hit['image_path']} {hit['caption']}")
