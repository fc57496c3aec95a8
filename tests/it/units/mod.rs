//! Tests of single types and functions of the library, one module per source file (named
//! at its top). They live here rather than in `#[cfg(test)]` modules of `src/` so that `cargo
//! test` does not compile the whole library a second time in test mode (87 s of a 2-core
//! machine's time before the tests could start); what they use is `pub`, the modules that
//! users need not see `#[doc(hidden)]`.

mod bm25;
mod bm25_tokenizer;
mod cluster_codec;
mod config;
mod embed_batch;
mod embed_chunk;
mod embed_encoder;
mod embed_eval;
mod embed_model;
mod incremental_tracker;
mod parquet_layout;
mod parquet_overlap;
mod parquet_staging;
mod pinecone_batcher;
mod pinecone_concurrency;
mod plan_fingerprint;
mod plan_memory;
mod plan_shard;
mod storage_lock;
