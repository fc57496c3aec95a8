//! What went wrong with a store, classified from the error's types (object_store's variants,
//! its HTTP error kinds, Parquet errors), never from its text.

use std::error::Error as StdError;

use object_store::client::HttpErrorKind;
use object_store::{ObjectStore, ObjectStoreExt};

/// The kinds of store failure a user can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreProblem {
    BucketMissing,
    Denied,
    Unreachable,
    NotParquet,
    NotFound,
    Other,
}

impl StoreProblem {
    fn advice(self) -> Option<&'static str> {
        Some(match self {
            StoreProblem::BucketMissing => "the bucket does not exist",
            StoreProblem::Denied => {
                "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy"
            }
            StoreProblem::Unreachable => {
                "cannot reach the S3 endpoint: check storage.s3.endpoint / AWS_ENDPOINT_URL"
            }
            StoreProblem::NotParquet => "the object is not Parquet",
            StoreProblem::NotFound => "no such object (or no matching files under the prefix)",
            StoreProblem::Other => return None,
        })
    }
}

/// Classifies an error by walking its chain of sources.
pub fn classify(err: &(dyn StdError + 'static)) -> StoreProblem {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(os) = e.downcast_ref::<object_store::Error>() {
            match os {
                object_store::Error::NotFound { .. } => return StoreProblem::NotFound,
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => return StoreProblem::Denied,
                _ => {}
            }
        }
        if let Some(h) = e.downcast_ref::<object_store::client::HttpError>()
            && matches!(
                h.kind(),
                HttpErrorKind::Connect | HttpErrorKind::Timeout | HttpErrorKind::Request
            )
        {
            return StoreProblem::Unreachable;
        }
        if e.is::<datafusion::parquet::errors::ParquetError>()
            || matches!(
                e.downcast_ref::<datafusion::arrow::error::ArrowError>(),
                Some(datafusion::arrow::error::ArrowError::ParquetError(_))
            )
            || matches!(
                e.downcast_ref::<datafusion::error::DataFusionError>(),
                Some(datafusion::error::DataFusionError::ParquetError(_))
            )
        {
            return StoreProblem::NotParquet;
        }
        current = e.source();
    }
    StoreProblem::Other
}

/// Classifies an error from `store`. A missing bucket reaches object_store as a generic error
/// (listing) or a "not found" (reading), so on those two, and only on this error path, the
/// bucket itself is asked: a HEAD of its root is S3's HeadBucket, whose 404 object_store maps to
/// its `NotFound` variant.
pub async fn classify_with_probe(
    err: &(dyn StdError + Send + Sync + 'static),
    store: Option<&dyn ObjectStore>,
) -> StoreProblem {
    let problem = classify(err);
    if matches!(problem, StoreProblem::NotFound | StoreProblem::Other)
        && let Some(store) = store
        && let Err(e) = store.head(&object_store::path::Path::from("")).await
        && classify(&e) == StoreProblem::NotFound
    {
        return StoreProblem::BucketMissing;
    }
    problem
}

/// `url: what is wrong (the error's own words)`.
pub fn describe(url: &str, problem: StoreProblem, err: &(dyn StdError + 'static)) -> String {
    let detail = crate::error::chain_text(err);
    match problem.advice() {
        Some(why) => format!("{url}: {why} ({detail})"),
        None => format!("{url}: {detail}"),
    }
}
