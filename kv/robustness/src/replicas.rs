//! Whether the members agree after a round: every member reaches the same revision, and
//! Maintenance.HashKV at that revision gives the same hash on each.
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use serde::Serialize;

use crate::traffic::connect;

/// How long members have to catch up to one revision.
const CATCH_UP: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    /// Each member's revision when the check gave up waiting or they agreed.
    pub revisions: Vec<Option<i64>>,
    /// Each member's HashKV at the common revision (none without one).
    pub hashes: Vec<Option<u32>>,
    pub passed: bool,
    pub detail: String,
}

/// Waits for every member in `endpoints` to report one revision, then compares HashKV there.
pub async fn check(endpoints: &[String]) -> Agreement {
    let deadline = Instant::now() + CATCH_UP;
    let mut revisions = Vec::new();
    while Instant::now() < deadline {
        revisions = member_revisions(endpoints).await;
        let first = revisions.first().copied().flatten();
        if first.is_some() && revisions.iter().all(|r| *r == first) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut agreement = Agreement {
        revisions: revisions.clone(),
        hashes: vec![None; endpoints.len()],
        passed: false,
        detail: String::new(),
    };
    let common = revisions.first().copied().flatten();
    let Some(revision) = common.filter(|_| revisions.iter().all(|r| *r == common)) else {
        agreement.detail = format!("members did not reach one revision in {CATCH_UP:?}");
        return agreement;
    };
    for (i, endpoint) in endpoints.iter().enumerate() {
        agreement.hashes[i] = hash_kv(endpoint, revision).await;
    }
    let first = agreement.hashes[0];
    agreement.passed = first.is_some() && agreement.hashes.iter().all(|h| *h == first);
    agreement.detail = if agreement.passed {
        format!(
            "revision {revision}, HashKV {:08x}",
            first.unwrap_or_default()
        )
    } else {
        format!("HashKV at revision {revision} differs (or failed)")
    };
    agreement
}

/// Each member's current revision from a serializable read it answers itself.
async fn member_revisions(endpoints: &[String]) -> Vec<Option<i64>> {
    let mut revisions = Vec::new();
    for endpoint in endpoints {
        revisions.push(member_revision(endpoint).await);
    }
    revisions
}

async fn member_revision(endpoint: &str) -> Option<i64> {
    let mut client = connect(&[endpoint.to_string()]).await.ok()?;
    let options = GetOptions::new().with_serializable().with_keys_only();
    let response = client.get("health", Some(options)).await.ok()?;
    response.header().map(|h| h.revision())
}

async fn hash_kv(endpoint: &str, revision: i64) -> Option<u32> {
    let mut client = connect(&[endpoint.to_string()]).await.ok()?;
    let response = client.hash_kv(revision).await.ok()?;
    Some(response.hash())
}
