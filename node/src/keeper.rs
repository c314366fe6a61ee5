//! Keeps the vault's epoch keys in step on this device (`hearth_core::epochs`).
//!
//! At start, after a device is removed here, on `hearth keys rotate`, when a recovery
//! kit is made, and whenever `_devices`, `_epochs` or `_recovery` change (a sync
//! brought a removal, a new device's exchange key, another device's epoch, a new kit):
//! rotates if a device that is no longer a member (or a replaced kit) could hold the
//! current key, seals the keys this device holds to members (and the kit) that lack
//! them, and refreshes the ring that signs and verifies tokens.

use std::sync::Arc;
use std::time::Duration;

use hearth_protocol::api::{ErrorCode, KeysInfo, KitInfo, KitRequest};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use crate::Vault;
use crate::epochs;
use crate::owner::{Error, blocking};

/// How long the keeper waits after a change for the rest of a burst (a sync brings
/// many changes at once).
const SETTLE: Duration = Duration::from_millis(100);

/// How long the keeper waits before it makes an epoch that a removal it learned of
/// calls for: the device that removed the other made one at once and is sending it
/// (the removal and the epoch travel as two collections), so two devices rarely both
/// make one. If they do, both pick the same (`hearth_core::epochs`).
const GRACE: Duration = Duration::from_secs(2);

/// Runs [`epochs::keep`] and commits what it wrote.
pub(crate) async fn keep(
    vault: &Arc<Vault>,
    rotation: epochs::Rotation,
) -> Result<epochs::Kept, Error> {
    let kept = blocking(vault, move |v| {
        Ok(epochs::keep(&v.collections, &v.store, &v.keys, rotation)?)
    })
    .await?;
    if kept.wrote() {
        vault.store.commit().await?;
    }
    Ok(kept)
}

/// `GET /v1/keys` (and, with `rotate`, `POST /v1/keys/rotate`).
pub async fn keys_info(vault: &Arc<Vault>, rotate: bool) -> Result<KeysInfo, Error> {
    let rotated = if rotate {
        let kept = keep(vault, epochs::Rotation::Now).await?;
        if kept.rotated_to.is_none() {
            return Err(Error::new(
                ErrorCode::Conflict,
                "this device is not a member of the vault any more: it cannot rotate its keys",
            ));
        }
        true
    } else {
        false
    };
    blocking(vault, move |v| {
        let view = epochs::view_of(&v.collections, v.keys.vault_id)?;
        let summary = v.keys.epochs.summary();
        let current = view.current(&v.keys.vault_id).cloned();
        let sealed_to = match &current {
            Some(epoch) => epoch.sealed.keys().cloned().collect(),
            None => crate::devices::devices(&v.collections)?
                .into_iter()
                .map(|d| d.id)
                .collect(),
        };
        Ok(KeysInfo {
            epoch: summary.epoch,
            id: summary.id,
            made_by: current.as_ref().map(|e| e.made_by.to_string()),
            made_at: current.as_ref().map(|e| e.made_at),
            sealed_to,
            held: summary.held,
            epochs: summary.epochs,
            epochs_held: summary.epochs_held,
            rotated,
        })
    })
    .await
}

/// `POST /v1/recovery`: makes `kit` the vault's recovery kit and seals every epoch
/// key this device holds to it (a new epoch first if the current one is epoch 0, or
/// is sealed to a kit this one replaces).
pub async fn set_kit(vault: &Arc<Vault>, request: KitRequest) -> Result<KitInfo, Error> {
    let request = serde_json::to_value(&request).expect("a kit request serializes");
    let kit = crate::recovery::KitPublic::parse(&request).map_err(|what| {
        Error::new(
            ErrorCode::BadRequest,
            format!("the kit's {what} is not valid"),
        )
    })?;
    blocking(vault, move |v| {
        // Newer than any kit this device knows, even with a clock behind.
        let latest =
            crate::recovery::current(&v.collections, &v.keys.vault_id)?.map_or(0, |(_, at)| at);
        let made_at = crate::clock::now_unix().max(latest.saturating_add(1));
        crate::recovery::set(
            &v.collections,
            &v.keys.vault_id,
            &v.keys.device,
            &kit,
            made_at,
        )?;
        Ok(())
    })
    .await?;
    vault.store.commit().await?;
    keep(vault, epochs::Rotation::IfNeeded).await?;
    kit_info(vault).await
}

/// `GET /v1/recovery`.
pub async fn kit_info(vault: &Arc<Vault>) -> Result<KitInfo, Error> {
    blocking(vault, move |v| {
        let view = epochs::view_of(&v.collections, v.keys.vault_id)?;
        let kit = crate::recovery::current(&v.collections, &v.keys.vault_id)?;
        let valid = view.valid(&v.keys.vault_id);
        let epochs_sealed = match &kit {
            Some((kit, _)) => valid
                .iter()
                .filter(|e| e.sealed.contains_key(&kit.recipient()))
                .count(),
            None => 0,
        };
        Ok(KitInfo {
            kit: kit.as_ref().map(|(k, _)| k.id.clone()),
            made_at: kit.map(|(_, at)| at),
            epoch: view.current(&v.keys.vault_id).map_or(0, |e| e.n),
            epochs_sealed,
            epochs: valid.len(),
        })
    })
    .await
}

/// Starts the task that keeps the epochs in step as the device list and the epochs
/// change. Stop it by sending on (or dropping) the sender, then await the handle.
pub(crate) fn spawn(vault: Arc<Vault>) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop_tx, mut stop) = oneshot::channel::<()>();
    let mut changes = vault.collections.subscribe();
    let task = tokio::spawn(async move {
        loop {
            let relevant = tokio::select! {
                _ = &mut stop => return,
                change = changes.recv() => match change {
                    Ok(changed) => matches!(
                        changed.collection.as_str(),
                        crate::devices::DEVICES | epochs::EPOCHS | crate::recovery::RECOVERY
                    ),
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if !relevant {
                continue;
            }
            tokio::select! {
                _ = &mut stop => return,
                () = tokio::time::sleep(SETTLE) => {}
            }
            // What arrived meanwhile is covered by the run below.
            while changes.try_recv().is_ok() {}
            let due = match keep(&vault, epochs::Rotation::Later).await {
                Ok(kept) => kept.due,
                Err(e) => {
                    tracing::warn!(
                        error = e.message(),
                        "cannot bring the vault's epoch keys in step"
                    );
                    false
                }
            };
            if due {
                tokio::select! {
                    _ = &mut stop => return,
                    () = tokio::time::sleep(GRACE) => {}
                }
                if let Err(e) = keep(&vault, epochs::Rotation::IfNeeded).await {
                    tracing::warn!(error = e.message(), "cannot rotate the vault's epoch keys");
                }
            }
        }
    });
    (stop_tx, task)
}
