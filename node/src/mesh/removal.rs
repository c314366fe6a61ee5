//! Telling a removed device that it was removed (`/hearth/removed/1`).
//!
//! The vault's devices stop syncing with a removed device at once, but it cannot learn
//! of its removal through sync (nobody syncs with it any more). So whenever it connects,
//! a member sends it the notice; it checks the sender is a member of its own list, of
//! the same vault, notes that it was removed (`status` and the dashboard say so) and
//! logs it once. The notice is kept in memory only (see `accept_loop`): a sync
//! with any member clears it.

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use hearth_protocol::sync::{REMOVED_NOTICE_LEN, REMOVED_PROTOCOL, decode_removed, encode_removed};
use libp2p::{PeerId, StreamProtocol};

use crate::Vault;
use crate::devices;

use super::MeshHandle;

/// How long a notice may take to arrive whole.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends the notice to `peer` if it is a removed device of this vault.
pub(super) fn tell_if_removed(vault: &Arc<Vault>, mesh: &MeshHandle, peer: PeerId) {
    let Some(removed_at) = devices::removed_at(&vault.collections, &peer) else {
        return;
    };
    let notice = encode_removed(&vault.keys.vault_id, removed_at);
    let mut control = mesh.streams();
    tokio::spawn(async move {
        let sent = tokio::time::timeout(NOTICE_TIMEOUT, async {
            let mut stream = control
                .open_stream(peer, StreamProtocol::new(REMOVED_PROTOCOL))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            stream.write_all(&notice).await?;
            stream.close().await
        })
        .await;
        match sent {
            Ok(Ok(())) => tracing::info!(%peer, "told a removed device that it was removed"),
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "cannot tell a removed device"),
            Err(_) => tracing::debug!(%peer, "telling a removed device timed out"),
        }
    });
}

/// Takes notices from the vault's devices.
pub(super) async fn accept_loop(
    vault: Arc<Vault>,
    mut incoming: libp2p_stream::IncomingStreams,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let Some((peer, mut stream)) = super::next_stream(&mut incoming, &mut stop).await else {
            return;
        };
        // Only a device this one counts as a member may say so.
        if !devices::is_member(&vault.collections, &peer) {
            continue;
        }
        let mut notice = [0u8; REMOVED_NOTICE_LEN];
        match tokio::time::timeout(NOTICE_TIMEOUT, stream.read_exact(&mut notice)).await {
            Ok(Ok(())) => {}
            _ => continue,
        }
        let (vault_id, removed_at) = decode_removed(&notice);
        if vault_id != vault.keys.vault_id {
            continue;
        }
        // Kept in memory only, never written to the (synced) device list: a removed
        // device that still holds the keys could otherwise tell a healthy device it
        // was removed, and that lie would spread. A real removal is told again at
        // every connection; a lie ends at the next sync with a member.
        let first = vault.removal_notice(Some(removed_at));
        if first {
            tracing::warn!(
                by = %peer,
                removed_at,
                "this device was removed from the vault: it no longer syncs with the vault's other devices. Its data stays here (`hearth export --all` takes it out)"
            );
        }
    }
}
