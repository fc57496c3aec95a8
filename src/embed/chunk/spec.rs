//! `embed.chunking` in the pipeline: the settings, apart from the chunker so that the embed
//! settings ([`crate::embed::spec`]) need nothing else of this module.

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, invalid};

/// `embed.chunking` in the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkingSpec {
    /// Word pieces per chunk, without [CLS] and [SEP]; default: the model's `max_seq_length`
    /// less those two, so a chunk is never cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// Word pieces shared by consecutive chunks.
    #[serde(default = "default_overlap")]
    pub overlap: usize,
}

fn default_overlap() -> usize {
    32
}

/// [CLS] and [SEP].
const SPECIAL_TOKENS: usize = 2;

impl ChunkingSpec {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_tokens.is_some_and(|m| m < 8) {
            return Err(invalid("embed.chunking.max_tokens", "must be at least 8"));
        }
        if let Some(m) = self.max_tokens
            && self.overlap >= m
        {
            return Err(invalid(
                "embed.chunking.overlap",
                format!("{} must be less than max_tokens ({m})", self.overlap),
            ));
        }
        Ok(())
    }

    /// The chunk size for a model taking `max_seq_length` word pieces.
    pub fn max_tokens_for(&self, max_seq_length: usize) -> Result<usize, ConfigError> {
        let fits = max_seq_length.saturating_sub(SPECIAL_TOKENS);
        let max_tokens = self.max_tokens.unwrap_or(fits);
        if max_tokens > fits {
            return Err(invalid(
                "embed.chunking.max_tokens",
                format!(
                    "{max_tokens} does not fit the model: {max_seq_length} tokens of its max_seq_length are left for text (after the document prompt, if any), so a chunk holds at most {fits} word pieces besides [CLS] and [SEP]"
                ),
            ));
        }
        if self.overlap >= max_tokens {
            return Err(invalid(
                "embed.chunking.overlap",
                format!(
                    "{} must be less than max_tokens ({max_tokens})",
                    self.overlap
                ),
            ));
        }
        Ok(max_tokens)
    }
}
