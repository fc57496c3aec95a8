//! `embed.sparse` in the pipeline: the BM25 settings, apart from the code that uses them so that
//! the embed settings ([`crate::embed::spec`]) need nothing else of this module.

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, invalid};

/// `embed.sparse` in the pipeline: `bm25`, or `{ method: bm25, params: FILE, k1, b }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(into = "SparseFull")]
pub struct SparseSpec {
    /// Where the fitted parameters live (local path or `s3://`): read when the file exists,
    /// else fitted on the source's texts and written there. Default: beside a Parquet output
    /// (`<path>.bm25.json`), else in the incremental state folder (`bm25.json`).
    pub params: Option<String>,
    pub k1: f64,
    pub b: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SparseMethod {
    Bm25,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SparseFull {
    method: SparseMethod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    params: Option<String>,
    #[serde(default = "default_k1")]
    k1: f64,
    #[serde(default = "default_b")]
    b: f64,
}

fn default_k1() -> f64 {
    1.2
}

fn default_b() -> f64 {
    0.75
}

impl From<SparseFull> for SparseSpec {
    fn from(f: SparseFull) -> SparseSpec {
        SparseSpec {
            params: f.params,
            k1: f.k1,
            b: f.b,
        }
    }
}

impl From<SparseSpec> for SparseFull {
    fn from(s: SparseSpec) -> SparseFull {
        SparseFull {
            method: SparseMethod::Bm25,
            params: s.params,
            k1: s.k1,
            b: s.b,
        }
    }
}

/// `bm25`, or the full form; an error names what is wrong in either (an untagged enum would
/// only say that nothing matched).
impl<'de> Deserialize<'de> for SparseSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = SparseSpec;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`bm25`, or { method: bm25, params: FILE, k1: 1.2, b: 0.75 }")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<SparseSpec, E> {
                let method =
                    SparseMethod::deserialize(serde::de::value::StrDeserializer::<E>::new(v))?;
                let SparseMethod::Bm25 = method;
                Ok(SparseSpec {
                    params: None,
                    k1: default_k1(),
                    b: default_b(),
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<SparseSpec, A::Error> {
                SparseFull::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(SparseSpec::from)
            }
        }
        d.deserialize_any(Form)
    }
}

impl SparseSpec {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.k1.is_finite() && self.k1 >= 0.0) {
            return Err(invalid("embed.sparse.k1", "must be a number, 0 or more"));
        }
        if !(0.0..=1.0).contains(&self.b) {
            return Err(invalid("embed.sparse.b", "must be between 0 and 1"));
        }
        Ok(())
    }
}
