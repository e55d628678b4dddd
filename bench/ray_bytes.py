"""13. Bytes the Ray driver receives per shard: a shard's reply (name, finite flags, token counts,
telemetry) pickled, against the shard's vector bytes, which the actor writes as a file instead.

One ShardEmbedder actor on a local Ray (2 CPUs) embeds 1,024 texts (`SHARD_TEXTS`) with a
generated 1-layer model of 48 and of 384 dimensions; "share_of_before" is the reply's size over
what the reply was when it carried the vectors (the same plus the vector bytes).

    python bench/ray_bytes.py
"""

from __future__ import annotations

import json
import pickle
import tempfile
from pathlib import Path

from embed_collections.engine.cache import text_digest
from embed_collections.engine.executors.ray_actors import SHARD_TEXTS, ShardEmbedder
from embed_collections.engine.models.resolve import resolve_ensemble
from embed_collections.engine.models.tiny import build_tiny_model


def main() -> None:
    import ray

    ray.init(num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False)
    tmp = Path(tempfile.mkdtemp())
    out = {}
    for dim in (48, 384):
        model = build_tiny_model(tmp / f"m{dim}", dim, seed=1, layers=1)
        (spec,) = resolve_ensemble([str(model)], None, None, False, None, None)
        actor = ray.remote(ShardEmbedder).remote(0, spec, "torch", "float32", "cpu", 32, 8192, {})
        texts = [f"shard text number {i} about a topic of some length" for i in range(SHARD_TEXTS)]
        digests = [text_digest(t) for t in texts]
        reply = ray.get(actor.embed.remote(0, texts, digests, str(tmp / f"s{dim}")))
        ray.kill(actor)
        received = len(pickle.dumps(reply))
        vectors = (tmp / f"s{dim}" / f"{reply[1]}.f32").stat().st_size
        out[dim] = {
            "received_bytes": received,
            "vector_bytes": vectors,
            "share_of_before": round(received / (received + vectors), 5),
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
