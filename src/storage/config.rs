//! `storage:` settings: per-pipeline overrides of the AWS environment for `s3://` paths.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Spec>,
}

/// Credentials come from the environment only (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, web identity), never from the pipeline file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Spec {
    /// S3-compatible endpoint, e.g. `http://127.0.0.1:9000`; default `$AWS_ENDPOINT_URL_S3`,
    /// then `$AWS_ENDPOINT_URL`, then AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Default `$AWS_REGION`, then `$AWS_DEFAULT_REGION`, then `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Allow plain http (default: only when the endpoint is an `http://` URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_http: Option<bool>,
    /// Path-style addressing (`endpoint/bucket/key`, the default) rather than virtual-hosted
    /// (`bucket.endpoint/key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
    /// Public buckets: send unsigned requests, no credentials needed.
    #[serde(default)]
    pub anonymous: bool,
    /// Allow credentials from the EC2/ECS instance metadata service when the environment has
    /// none (off by default, so a missing key is an error rather than a long wait).
    #[serde(default)]
    pub instance_metadata: bool,
}
