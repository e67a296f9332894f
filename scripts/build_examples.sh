#!/usr/bin/env bash
# Example index builds to copy. Each command resumes if killed: re-run it unchanged.
set -euo pipefail

# 1. A folder of images with same-stem .txt captions (optional .json metadata), any depth.
retrieval build /data/photos --out indexes/photos

# 2. A Parquet/CSV manifest: image paths relative to --image-root (default: the manifest's folder).
#    Consecutive rows for the same image (several captions per photo) become one item.
retrieval build /data/flickr/captions.csv --image-root /data/flickr/images --out indexes/flickr \
    --image-column image --caption-column caption

# 3. WebDataset shards (a .tar, or a folder of .tar holding jpg/png/webp + txt/json members).
retrieval build /data/laion-subset/ --out indexes/laion --shard-size 1000000 --memory-budget 8GB

# 4. Local weights instead of the hub: an open_clip folder, or an arch + a checkpoint file.
retrieval build /data/photos --out indexes/photos-local --model /models/my-clip-folder
retrieval build /data/photos --out indexes/photos-b32 --model ViT-B-32 --pretrained /models/vit-b-32.safetensors

# 5. Force an index type for every shard (faiss factory string) and inspect the result.
retrieval build /data/photos --out indexes/photos-ivf --index-key "IVF1024,Flat"
retrieval info indexes/photos-ivf
