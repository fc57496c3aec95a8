//! Fingerprints: what a row's vector depends on, so a later run can tell what changed.
//!
//! - `fingerprint(label, a, b, ...)`: a DataFusion UDF giving, per row, the first 128 bits of the
//!   SHA-256 of the columns' values (Arrow's row format, which encodes any type and tells null
//!   from empty) after `label` (the column names). Text columns are hashed as UTF-8 whatever
//!   their Arrow layout (`Utf8`, `Utf8View`, dictionary), so a change of reader does not look
//!   like a change of data.
//! - [`EmbeddingSettings`]: everything about the model that shapes a vector (the graph's and the
//!   tokenizer's bytes, precision, `max_seq_length`, pooling, chunking), hashed once per run.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::{Expr, ident, lit};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::embed::Embedder;

/// `fingerprint(label, columns...)`; see the module documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FingerprintUdf {
    signature: Signature,
}

impl FingerprintUdf {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(FingerprintUdf {
            signature: Signature::variadic_any(Volatility::Immutable),
        })
    }
}

/// `fingerprint(...)` over `columns`, labelled with their names.
pub fn fingerprint_expr(udf: &Arc<ScalarUDF>, columns: &[String]) -> Expr {
    let mut args = vec![lit(columns.join("\u{1f}"))];
    args.extend(columns.iter().map(|c| ident(c.as_str())));
    udf.call(args)
}

/// Text of any layout becomes `Utf8`; other types stay as they are.
fn canonical(array: ArrayRef) -> Result<ArrayRef> {
    let text =
        |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    let is_text = match array.data_type() {
        DataType::Dictionary(_, v) => text(v),
        t => text(t),
    };
    Ok(if is_text && array.data_type() != &DataType::Utf8 {
        cast(&array, &DataType::Utf8)?
    } else {
        array
    })
}

impl ScalarUDFImpl for FingerprintUdf {
    fn name(&self) -> &str {
        "fingerprint"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let Some((label, columns)) = args.args.split_first() else {
            return exec_err!("fingerprint(label, columns...) needs a label");
        };
        let label = match label {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))) => s.clone(),
            _ => return exec_err!("fingerprint: the label must be a text literal"),
        };
        let arrays = columns
            .iter()
            .map(|c| c.to_array(rows).and_then(canonical))
            .collect::<Result<Vec<_>>>()?;
        let mut prefix = Sha256::new();
        prefix.update(label.as_bytes());
        prefix.update([0u8]);
        let mut out = StringBuilder::with_capacity(rows, rows * 32);
        if arrays.is_empty() {
            let digest = prefix.finalize();
            for _ in 0..rows {
                out.append_value(hex::encode(&digest[..16]));
            }
        } else {
            let converter = RowConverter::new(
                arrays
                    .iter()
                    .map(|a| SortField::new(a.data_type().clone()))
                    .collect(),
            )?;
            let encoded = converter.convert_columns(&arrays)?;
            for row in encoded.iter() {
                let mut h = prefix.clone();
                h.update(row.as_ref());
                out.append_value(hex::encode(&h.finalize()[..16]));
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// What shapes a vector besides its text. Two runs with equal settings embed a text alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingSettings {
    /// The model as the pipeline names it (for messages; not part of the fingerprint).
    pub model: String,
    /// SHA-256 of the ONNX graph that runs (after any int8 preparation) and of tokenizer.json.
    pub graph_sha256: String,
    pub tokenizer_sha256: String,
    pub precision: String,
    pub max_seq_length: usize,
    pub pooling: String,
    pub normalize: bool,
    /// `max_tokens/overlap` of embed.chunking, or `none`.
    pub chunking: String,
    /// The document prompt put before each text (empty: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prompt: String,
    /// `embed.dimensions`, when the vectors are cut (0: the model's width).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dimensions: usize,
    /// `embed.sparse`: what shapes a row's sparse vector (empty: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sparse: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl EmbeddingSettings {
    /// The settings of a loaded model (hashes its files: about a second for 90 MB).
    pub fn of(embedder: &Embedder, chunking: Option<(usize, usize)>) -> anyhow::Result<Self> {
        let files = embedder.model_files();
        let settings = &files.settings;
        Ok(EmbeddingSettings {
            model: embedder.model_name().to_string(),
            graph_sha256: sha256_file(embedder.graph_path())?,
            tokenizer_sha256: sha256_file(&files.tokenizer)?,
            precision: embedder.precision().as_str().to_string(),
            max_seq_length: embedder.max_seq_length(),
            pooling: format!("{:?}", settings.pooling).to_lowercase(),
            normalize: settings.normalize,
            chunking: match chunking {
                Some((max, overlap)) => format!("{max}/{overlap}"),
                None => "none".into(),
            },
            prompt: embedder
                .prompt(crate::embed::Side::Document)
                .map(|p| p.text.clone())
                .unwrap_or_default(),
            dimensions: embedder.spec().dimensions.unwrap_or(0),
            sparse: String::new(),
        })
    }

    /// The settings of a pipeline that reads its vectors from `column` (`embed.vector`): no
    /// model shapes them, so a vector changes exactly when the column's value does.
    pub fn of_vectors(column: &str) -> Self {
        EmbeddingSettings {
            model: format!("embed.vector: {column}"),
            graph_sha256: String::new(),
            tokenizer_sha256: String::new(),
            precision: "given".into(),
            max_seq_length: 0,
            pooling: "none".into(),
            normalize: false,
            chunking: "none".into(),
            prompt: String::new(),
            dimensions: 0,
            sparse: String::new(),
        }
    }

    /// The fingerprint stored with each row: 128 bits of SHA-256 over everything but the name.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.graph_sha256.as_str(),
            &self.tokenizer_sha256,
            &self.precision,
            &self.max_seq_length.to_string(),
            &self.pooling,
            &self.normalize.to_string(),
            &self.chunking,
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        // Hashed only when set, so that states written before these settings keep their
        // fingerprints.
        if !self.prompt.is_empty() {
            h.update(b"prompt\0");
            h.update(self.prompt.as_bytes());
            h.update([0u8]);
        }
        if self.dimensions > 0 {
            h.update(format!("dimensions\0{}\0", self.dimensions).as_bytes());
        }
        if !self.sparse.is_empty() {
            h.update(b"sparse\0");
            h.update(self.sparse.as_bytes());
            h.update([0u8]);
        }
        hex::encode(&h.finalize()[..16])
    }

    /// What differs from `earlier`, for the log line that explains a full re-embedding.
    pub fn changes_since(&self, earlier: &EmbeddingSettings) -> String {
        let mut out = Vec::new();
        let short = |s: &str| s.chars().take(12).collect::<String>();
        if self.graph_sha256 != earlier.graph_sha256 {
            out.push(format!(
                "model graph {} (sha256 {}) -> {} (sha256 {})",
                earlier.model,
                short(&earlier.graph_sha256),
                self.model,
                short(&self.graph_sha256)
            ));
        }
        if self.tokenizer_sha256 != earlier.tokenizer_sha256 {
            out.push("tokenizer.json changed".into());
        }
        let mut field = |name: &str, a: &str, b: &str| {
            if a != b {
                out.push(format!("{name} {a} -> {b}"));
            }
        };
        field("precision", &earlier.precision, &self.precision);
        field(
            "max_seq_length",
            &earlier.max_seq_length.to_string(),
            &self.max_seq_length.to_string(),
        );
        field("pooling", &earlier.pooling, &self.pooling);
        field(
            "normalize",
            &earlier.normalize.to_string(),
            &self.normalize.to_string(),
        );
        field("chunking", &earlier.chunking, &self.chunking);
        field(
            "prompt",
            &format!("{:?}", earlier.prompt),
            &format!("{:?}", self.prompt),
        );
        field(
            "dimensions",
            &earlier.dimensions.to_string(),
            &self.dimensions.to_string(),
        );
        field("sparse", &earlier.sparse, &self.sparse);
        out.join(", ")
    }
}

impl Hash for EmbeddingSettings {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.fingerprint().hash(state);
    }
}

fn sha256_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot read {} to fingerprint it", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)
            .with_context(|| format!("cannot read {} to fingerprint it", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
