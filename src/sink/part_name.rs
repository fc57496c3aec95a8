//! The name of an output part written by a partition (a cluster task or a shard's partition).

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;

/// The name of a part, from the ids of its rows: the wrapping sum of each id's SHA-256 (first
/// 16 bytes). A task that Ballista runs again reads the same rows, in whatever order, so it
/// writes the same part again rather than a second copy; two different partitions never hold
/// the same rows, so they never share a name.
#[derive(Default)]
pub struct PartName(u128);

impl PartName {
    pub fn add(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        use datafusion::arrow::array::{Array, AsArray};
        use sha2::Digest;
        let ids = batch
            .column_by_name("id")
            .ok_or_else(|| anyhow::anyhow!("the rows have no id column"))?;
        let ids = datafusion::arrow::compute::cast(ids, &DataType::Utf8)?;
        let ids = ids.as_string::<i32>();
        for i in 0..ids.len() {
            let digest = sha2::Sha256::digest(ids.value(i).as_bytes());
            let mut first = [0u8; 16];
            first.copy_from_slice(&digest[..16]);
            self.0 = self.0.wrapping_add(u128::from_be_bytes(first));
        }
        Ok(())
    }

    pub fn file_name(&self) -> String {
        format!("{}.parquet", self.stem())
    }

    /// `part-<name>`.
    pub fn stem(&self) -> String {
        format!("part-{:032x}", self.0)
    }
}
