"""Upload the same vectors with the official Pinecone Python SDK, for benches/pinecone_upload.rs.

Usage: python pinecone_sdk_upsert.py VECTORS.json CONTROLLER_URL INDEX_URL
Prints one JSON line per configuration: {"label", "vectors", "seconds", "upserted"}.
The API key comes from PINECONE_API_KEY.
"""

import json
import os
import sys
import time

from pinecone import Pinecone


def main() -> None:
    path, controller, index_url = sys.argv[1:4]
    with open(path) as f:
        data = json.load(f)
    vectors = [(d["id"], d["values"], d["metadata"]) for d in data]
    pc = Pinecone(api_key=os.environ["PINECONE_API_KEY"], host=controller)
    index = pc.index(host=index_url)
    for label, kwargs in [
        ("pinecone SDK upsert(batch_size=100)", {}),
        ("pinecone SDK upsert(batch_size=100, max_concurrency=16)", {"max_concurrency": 16}),
    ]:
        namespace = "sdk-" + str(kwargs.get("max_concurrency", "default"))
        start = time.perf_counter()
        resp = index.upsert(
            vectors=vectors,
            batch_size=100,
            namespace=namespace,
            show_progress=False,
            **kwargs,
        )
        seconds = time.perf_counter() - start
        upserted = getattr(resp, "upserted_count", None)
        print(
            json.dumps(
                {"label": label, "vectors": len(vectors), "seconds": seconds, "upserted": upserted}
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
