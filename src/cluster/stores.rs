//! The object stores of a cluster job: the pipeline's `storage:` settings (endpoint, region,
//! addressing; never credentials) and the remote locations the job reads travel with the job as a
//! session setting (`embedflow.stores`), which Ballista hands to every task. Each executor builds
//! its S3 clients from them and its own environment (its own AWS credentials), for the runtime
//! its tasks run in.

use std::sync::Arc;

use anyhow::Result;
use ballista_core::extension::SessionConfigExt;
use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::common::{DataFusionError, config_err};
use datafusion::execution::context::SessionConfig;
use datafusion::execution::runtime_env::RuntimeEnv;
use serde::{Deserialize, Serialize};

use crate::storage::{RemoteUrl, StorageSpec, s3_store};

/// What travels: the settings, and the remote paths whose stores the tasks need.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stores {
    storage: StorageSpec,
    paths: Vec<String>,
}

/// The `embedflow.stores` session setting.
#[derive(Debug, Clone, Default)]
pub struct TravellingStores {
    json: String,
}

const KEY: &str = "stores";

impl ConfigExtension for TravellingStores {
    const PREFIX: &'static str = "embedflow";
}

impl ExtensionOptions for TravellingStores {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> datafusion::common::Result<()> {
        if key != KEY {
            return config_err!("embedflow.{key} is not a setting (embedflow.{KEY} is)");
        }
        self.json = value.to_string();
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        vec![ConfigEntry {
            key: format!("{}.{KEY}", Self::PREFIX),
            value: (!self.json.is_empty()).then(|| self.json.clone()),
            description: "the job's storage settings and remote paths (no credentials)",
        }]
    }
}

impl TravellingStores {
    /// The setting for a job that reads and writes `paths` (local ones are left out).
    pub fn new<'a>(
        storage: &StorageSpec,
        paths: impl IntoIterator<Item = &'a str>,
    ) -> TravellingStores {
        let paths: Vec<String> = paths
            .into_iter()
            .filter(|p| crate::storage::is_remote(p))
            .map(str::to_string)
            .collect();
        if paths.is_empty() {
            return TravellingStores::default();
        }
        let stores = Stores {
            storage: storage.clone(),
            paths,
        };
        TravellingStores {
            json: serde_json::to_string(&stores).unwrap_or_default(),
        }
    }
}

/// The session settings the scheduler and the executors start each job or task from:
/// Ballista's, with `embedflow.stores` known, so that the job's value is taken, not dropped.
pub fn config_with_stores() -> SessionConfig {
    SessionConfig::new_with_ballista().with_option_extension(TravellingStores::default())
}

/// The scheduler's session for a job: Ballista's, with the job's object stores registered, as
/// decoding the plan needs them. The scheduler reads no data: without AWS credentials of its
/// own, it registers unsigned clients.
pub fn scheduler_session(
    config: SessionConfig,
) -> datafusion::common::Result<datafusion::execution::SessionState> {
    let state = ballista_core::utils::default_session_builder(config.clone())?;
    register(&config, state.runtime_env(), true)?;
    Ok(state)
}

/// Registers, in `runtime`, an S3 client for each remote path the job's settings name, built
/// from those settings and this process's environment (an executor's task).
pub fn register_job_stores(
    config: &SessionConfig,
    runtime: &RuntimeEnv,
) -> datafusion::common::Result<()> {
    register(config, runtime, false)
}

fn register(
    config: &SessionConfig,
    runtime: &RuntimeEnv,
    unsigned_without_credentials: bool,
) -> datafusion::common::Result<()> {
    let Some(travelling) = config.options().extensions.get::<TravellingStores>() else {
        return Ok(());
    };
    if travelling.json.is_empty() {
        return Ok(());
    }
    let stores: Stores = serde_json::from_str(&travelling.json).map_err(|e| {
        DataFusionError::Configuration(format!("embedflow.stores is not readable: {e}"))
    })?;
    for path in &stores.paths {
        let built = match build(path, &stores.storage) {
            Err(_) if unsigned_without_credentials => {
                let mut storage = stores.storage.clone();
                storage.s3.get_or_insert_default().anonymous = true;
                build(path, &storage)
            }
            other => other,
        };
        let (url, store) =
            built.map_err(|e| DataFusionError::External(crate::error::describe(&e).into()))?;
        runtime.register_object_store(&url, store);
    }
    Ok(())
}

fn build(
    path: &str,
    storage: &StorageSpec,
) -> Result<(url::Url, Arc<dyn object_store::ObjectStore>)> {
    let remote = RemoteUrl::parse("a cluster job's path", path)?;
    let store = s3_store(path, &remote.bucket, storage.s3.as_ref())?;
    Ok((remote.store_url, store))
}
