//! One output folder, one layout. A Parquet output folder holds the parts of one way of
//! splitting the job: a whole run (`part-0.parquet`), `--shard I/N` runs (`part-I.parquet`, N of
//! them) or a cluster job (one part per partition). Each part records its layout in its footer
//! (`embedflow.layout`), so that runs of another layout never mix with it silently:
//!
//! - a `--shard I/N` run refuses a folder holding parts of another layout (it writes one part of
//!   N, and cannot replace the others);
//! - a whole run, or a cluster job, replaces the folder's parts whole: after publishing, it
//!   removes the parts it did not write, and says which layout it replaced.

use std::sync::Arc;

use anyhow::{Context, Result};
use datafusion::parquet::file::metadata::KeyValue;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::config_error;
use crate::shard::Shard;
use crate::storage::names_parquet_file;

/// The footer key that holds a part's layout.
pub const KEY: &str = "embedflow.layout";

/// How a part's job was split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A whole run: one file.
    Whole,
    /// One of `count` shards (`--shard I/N`).
    Sharded { count: u32 },
    /// A cluster job: one part per partition.
    Cluster,
}

impl Layout {
    pub fn of_shard(shard: Option<Shard>) -> Layout {
        match shard {
            None => Layout::Whole,
            Some(s) => Layout::Sharded { count: s.count },
        }
    }

    pub fn tag(self) -> String {
        match self {
            Layout::Whole => "whole".into(),
            Layout::Sharded { count } => format!("shards/{count}"),
            Layout::Cluster => "cluster".into(),
        }
    }

    pub fn parse(tag: &str) -> Option<Layout> {
        match tag {
            "whole" => Some(Layout::Whole),
            "cluster" => Some(Layout::Cluster),
            _ => tag
                .strip_prefix("shards/")
                .and_then(|n| n.parse().ok())
                .map(|count| Layout::Sharded { count }),
        }
    }

    /// The footer entry that records this layout.
    pub fn key_value(self) -> KeyValue {
        KeyValue::new(KEY.to_string(), self.tag())
    }

    fn describe(self) -> String {
        match self {
            Layout::Whole => "a run without --shard".into(),
            Layout::Sharded { count } => {
                format!("a run split into {count} shards (--shard I/{count})")
            }
            Layout::Cluster => "a cluster run (--cluster)".into(),
        }
    }
}

/// True for the name of a part (`part-….parquet`).
pub fn is_part(name: &str) -> bool {
    name.starts_with("part-") && names_parquet_file(name)
}

/// The parts in `folder` other than `own`, with their layouts (`None`: written before layouts
/// were recorded, or unreadable).
async fn other_parts(
    store: &Arc<dyn ObjectStore>,
    folder: &Path,
    own: &Path,
) -> Result<Vec<(Path, Option<Layout>)>> {
    let listed = store
        .list_with_delimiter(Some(folder))
        .await
        .with_context(|| format!("cannot list the output folder {folder}"))?;
    let mut out = Vec::new();
    for object in listed.objects {
        let Some(name) = object.location.filename() else {
            continue;
        };
        if !is_part(name) || &object.location == own {
            continue;
        }
        let layout = read_layout(store, &object.location).await;
        out.push((object.location, layout));
    }
    Ok(out)
}

async fn read_layout(store: &Arc<dyn ObjectStore>, path: &Path) -> Option<Layout> {
    let footer = crate::storage::parquet_footer(store, path).await.ok()?;
    footer
        .file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|kv| kv.key == KEY)
        .and_then(|kv| kv.value.as_deref())
        .and_then(Layout::parse)
}

fn folder_of(path: &Path) -> Path {
    let parts = path.parts().count().saturating_sub(1);
    path.parts().take(parts).collect()
}

/// Before a `--shard I/N` run writes its part: refuses a folder that holds parts of another
/// layout, naming one. (A whole run or a cluster job replaces the folder instead: see
/// [`replace_other_parts`].)
pub async fn check_shard_fits(
    store: &Arc<dyn ObjectStore>,
    own: &Path,
    display: &str,
    shard: Shard,
) -> Result<()> {
    let mine = Layout::of_shard(Some(shard));
    let folder = folder_of(own);
    for (path, layout) in other_parts(store, &folder, own).await? {
        let name = path.filename().unwrap_or_default().to_string();
        let fits = match layout {
            Some(l) => l == mine,
            // Written before layouts were recorded: a part of a split into at least as many
            // shards as its number, as earlier versions named them.
            None => name
                .strip_prefix("part-")
                .and_then(|n| n.strip_suffix(".parquet"))
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|i| i < shard.count as usize),
        };
        if !fits {
            let by = layout
                .map(Layout::describe)
                .unwrap_or_else(|| "another layout".into());
            return Err(config_error(format!(
                "sink.parquet.path: the folder of {display} holds {name}, written by {by}, but --shard {shard} writes one part of {}; a folder holds the parts of one layout, or a search would find rows twice: write the shards to another folder, or run without --shard to replace the folder's parts",
                shard.count
            )));
        }
    }
    Ok(())
}

/// After a whole run published `own`: removes the other parts in its folder (another layout's,
/// which would otherwise be read beside the new output), saying which it replaced.
pub async fn replace_other_parts(
    store: &Arc<dyn ObjectStore>,
    own: &Path,
    shown: &str,
) -> Result<()> {
    if !own.filename().is_some_and(is_part) {
        return Ok(());
    }
    let folder = folder_of(own);
    let others = other_parts(store, &folder, own).await?;
    if others.is_empty() {
        return Ok(());
    }
    let layouts: Vec<String> = {
        let mut l: Vec<String> = others
            .iter()
            .map(|(_, l)| {
                l.map(Layout::describe)
                    .unwrap_or_else(|| "an earlier run".into())
            })
            .collect();
        l.sort();
        l.dedup();
        l
    };
    let names: Vec<&str> = others.iter().filter_map(|(p, _)| p.filename()).collect();
    tracing::warn!(
        "{shown} replaces the folder's parts of {}: removed {}",
        layouts.join(" and "),
        names.join(", ")
    );
    for (path, _) in &others {
        store
            .delete(path)
            .await
            .with_context(|| format!("cannot remove the earlier part {path}"))?;
    }
    Ok(())
}
