//! Refuses an output that would overwrite or sit among the pipeline's own sources: the same
//! file under any spelling (`./`, `..`, a symlink), a source folder or glob that holds the
//! output, or an output folder or S3 prefix that holds source files.

use std::path::{Component, Path, PathBuf};

use super::config::ParquetSinkSpec;
use crate::error::{ConfigError, invalid};
use crate::plan::source::SourceSpec;
use crate::storage::{self, RemoteUrl};

/// Fails before anything runs when the output and a source overlap.
pub fn refuse_output_over_sources(
    spec: &ParquetSinkSpec,
    source: &SourceSpec,
) -> Result<(), ConfigError> {
    let output_is_file = storage::names_parquet_file(&spec.path);
    for (name, table) in &source.tables {
        let clash = match (
            storage::is_remote(&spec.path),
            storage::is_remote(&table.path),
        ) {
            (false, false) => local_clash(&spec.path, output_is_file, &table.path),
            (true, true) => remote_clash(&spec.path, output_is_file, &table.path),
            _ => None,
        };
        if let Some(why) = clash {
            return Err(invalid(
                "sink.parquet.path",
                format!(
                    "`{}` would write over the pipeline's own source: table `{name}` reads `{}`, and {why}; write the output somewhere else",
                    spec.path, table.path
                ),
            ));
        }
    }
    Ok(())
}

/// An absolute path with symlinks, `.` and `..` resolved as far as the path exists.
fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                match part {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    other => out.push(other.as_os_str()),
                }
            }
            return out;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

fn local(path: &str) -> &str {
    path.strip_prefix("file://").unwrap_or(path)
}

fn local_clash(output: &str, output_is_file: bool, source: &str) -> Option<String> {
    let out_file = resolve(&storage::local_output_file(Path::new(local(output))));
    let out_dir = out_file.parent().map(Path::to_path_buf).unwrap_or_default();
    let source = local(source);
    let mut sources = Vec::new();
    if storage::is_glob(source) {
        if let Ok(paths) = glob::glob(source) {
            sources.extend(paths.flatten().map(|p| resolve(&p)));
        }
        // The glob would also read the output on the next run.
        let base: String = source.chars().take_while(|c| !"*?[".contains(*c)).collect();
        let split = base.rfind('/').map_or(0, |i| i + 1);
        let dir = resolve(Path::new(if split == 0 { "." } else { &base[..split] }));
        let pattern = format!("{}/{}", dir.display(), &source[split..]);
        let within_folders = glob::MatchOptions {
            require_literal_separator: true,
            ..Default::default()
        };
        if glob::Pattern::new(&pattern)
            .is_ok_and(|p| p.matches_path_with(&out_file, within_folders))
        {
            return Some(format!(
                "the output {} matches the source's glob",
                out_file.display()
            ));
        }
    } else {
        sources.push(resolve(Path::new(source)));
    }
    for s in sources {
        if s == out_file {
            return Some(format!("the output {} is that file", out_file.display()));
        }
        if s.is_dir() && out_file.starts_with(&s) {
            return Some(format!(
                "the output {} is inside that folder",
                out_file.display()
            ));
        }
        if !output_is_file && s.starts_with(&out_dir) {
            return Some(format!(
                "the output folder {} holds {}",
                out_dir.display(),
                s.display()
            ));
        }
    }
    None
}

/// Path segments of a key, up to its first glob character.
fn segments(key: &str) -> Vec<&str> {
    let end = key.find(['*', '?', '[']).unwrap_or(key.len());
    let literal = &key[..end];
    let mut parts: Vec<&str> = literal.split('/').filter(|p| !p.is_empty()).collect();
    if end < key.len() && !literal.ends_with('/') {
        // The last segment is a partial name with a glob: compare the folders above it only.
        parts.pop();
    }
    parts
}

fn remote_clash(output: &str, output_is_file: bool, source: &str) -> Option<String> {
    let out = RemoteUrl::parse("sink.parquet.path", output).ok()?;
    let src = RemoteUrl::parse("source", source).ok()?;
    if out.bucket != src.bucket {
        return None;
    }
    let out_key = storage::remote_output_key(&out.key);
    let out_file = segments(&out_key);
    let out_dir = &out_file[..out_file.len().saturating_sub(1)];
    let src_parts = segments(&src.key);
    let shown = format!("s3://{}/{out_key}", out.bucket);
    if out_file.starts_with(&src_parts) {
        return Some(format!("the output {shown} is under it"));
    }
    if !output_is_file && src_parts.starts_with(out_dir) {
        return Some(format!(
            "the output prefix s3://{}/{} holds it",
            out.bucket,
            out_dir.join("/")
        ));
    }
    None
}
