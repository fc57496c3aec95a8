//! `src/storage/lock.rs`

use std::sync::Arc;

use embedflow::storage::lock::*;
use object_store::ObjectStore;
use object_store::path::Path;

#[test]
fn dates_and_staleness() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_795_921_285), "2026-11-29T03:01:25Z");
    let mut h = Holder::me(unix_now());
    assert!(!h.is_stale(), "this process holds it");
    h.pid = u32::MAX - 1;
    assert!(h.is_stale(), "a pid that does not exist on this host");
    h.host = "elsewhere".into();
    assert!(!h.is_stale(), "another host, fresh heartbeat");
    h.heartbeat -= STALE_AFTER.as_secs() + 1;
    assert!(h.is_stale(), "another host, old heartbeat");
}

#[tokio::test]
async fn a_second_taker_is_refused_and_a_release_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
    let path = Path::from_absolute_path(dir.path().join("out.lock")).unwrap();
    let first = OutputLock::acquire(Arc::clone(&store), path.clone(), "out.lock".into())
        .await
        .unwrap();
    let second = OutputLock::acquire(Arc::clone(&store), path.clone(), "out.lock".into())
        .await
        .unwrap_err();
    let locked = second.downcast_ref::<Locked>().expect("Locked");
    assert!(
        locked
            .holder
            .contains(&format!("pid {}", std::process::id())),
        "{locked}"
    );
    first.release().await;
    assert!(!dir.path().join("out.lock").exists());
    let again = OutputLock::acquire(store, path, "out.lock".into()).await;
    assert!(again.is_ok());
}
