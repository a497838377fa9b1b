//! A secure cluster's store users, set up by its first master once the store answers: the
//! roles `flannel` (read and write under the network prefix) and `fleet` (under fleet's
//! prefix), the users `root`, `flannel` and `fleet` (no passwords: each proves itself with the
//! client certificate whose common name is its name), then etcd's auth turned on. Every step
//! is idempotent, so a restart, or a second attempt after a failure, does no harm.
use std::time::Duration;

use anyhow::Result;
use shoal_pki::{FLANNEL, FLEET, ROOT};
use shoal_store_client::{
    StoreClient, StoreConfig,
    etcd_client::{Permission, UserAddOptions},
};

use super::plan::StoreUsers;

/// etcd's built-in role of its `root` user.
const ROOT_ROLE: &str = "root";

/// Sets the users up, retrying until the store answers.
pub async fn set_up_once(store: StoreConfig, users: StoreUsers) -> Result<()> {
    let mut delay = Duration::from_millis(200);
    loop {
        match set_up(&store, &users).await {
            Ok(()) => {
                tracing::info!("store users in place, auth enabled");
                return Ok(());
            }
            Err(err) => {
                tracing::info!("store not ready for its users yet: {err:#}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn set_up(store: &StoreConfig, users: &StoreUsers) -> Result<()> {
    let store = StoreClient::connect(store).await?;
    let mut client = store.client();
    let roles = store.call("listing roles", client.role_list()).await?;
    for (role, prefix) in [
        (FLANNEL, &users.network_prefix),
        (FLEET, &users.fleet_prefix),
    ] {
        if !roles.roles().iter().any(|known| known == role) {
            store.call("adding a role", client.role_add(role)).await?;
        }
        let permission = Permission::read_write(prefix.as_str()).with_prefix();
        store
            .call(
                "granting a role its prefix",
                client.role_grant_permission(role, permission),
            )
            .await?;
    }
    let known = store.call("listing users", client.user_list()).await?;
    for (user, role) in [(ROOT, ROOT_ROLE), (FLANNEL, FLANNEL), (FLEET, FLEET)] {
        if !known.users().iter().any(|name| name == user) {
            let certificate_only = UserAddOptions::new().with_no_pwd();
            store
                .call(
                    "adding a user",
                    client.user_add(user, "", Some(certificate_only)),
                )
                .await?;
        }
        store
            .call(
                "granting a user its role",
                client.user_grant_role(user, role),
            )
            .await?;
    }
    store.call("enabling auth", client.auth_enable()).await?;
    Ok(())
}
