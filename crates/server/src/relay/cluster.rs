//! The relay across replicas, on PostgreSQL: presence rows with a heartbeat lease, and
//! `LISTEN/NOTIFY` on one channel for what a replica must do to a tool it holds.
//!
//! - **Presence.** Each replica keeps a row in `relay_replicas` fresh every [`HEARTBEAT_EVERY`];
//!   each connected tool has a `relay_presence` row naming its replica. A tool counts as online only
//!   while its replica's heartbeat is younger than [`PRESENCE_LEASE`], so a replica that was killed
//!   stops looking online after one lease; its rows are pruned later by any replica. A replica
//!   that finds its own row gone (it stalled past the lease and was pruned) claims its tools again.
//! - **Notifications** carry ids and fixed reason words only, never secrets; the receiver re-reads
//!   what it needs (the session, the key) from the database and checks the organisation.
//! - **Acknowledged attach.** The replica holding a tool answers `Attach` with `Attached` once the
//!   tool shows the session; the sender reports the session as connected only then. A replica
//!   killed within its lease never answers, so Connect learns it within [`ATTACH_ACK_TIMEOUT`]
//!   instead of claiming success (the caller ends the session and audits it).
//! - **Lost notifications.** While the `LISTEN` connection is down, notifications are lost. When
//!   it comes back (and every [`RESYNC_EVERY`] as a safety net) the replica re-reads, for each tool
//!   it holds, what the database says the tool should show, and fixes the difference.

use std::sync::{Arc, Weak};
use std::time::Duration;

use keyward_store::{DeviceOwner, PairDeviceRecord, Store, StoreError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::protocol::{ErrorCode, SessionMode};
use super::{Attached, RelayHub, SUPERSEDED, live_delegated};

/// The notification channel shared by all replicas.
pub const CHANNEL: &str = "keyward_relay";
/// How often a replica refreshes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// How long a replica's tools count as online after its last heartbeat.
pub const PRESENCE_LEASE: Duration = Duration::from_secs(10);
/// Replicas silent for this long are deleted (with their presence rows).
const PRUNE_AFTER: Duration = Duration::from_secs(60);
/// Every tool's state is re-read from the database this often, in case a notification was lost
/// in a way the listener could not notice.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// How long a replica waits for the replica holding a tool to acknowledge an attach before it
/// tells the admin the tool's server did not answer (and ends the session). A healthy round trip
/// is two notifications and one read, a few milliseconds; the rest is room for a busy database.
/// It bounds Connect's answer when the presence rows name a replica that was killed but whose
/// lease ([`PRESENCE_LEASE`]) has not run out yet.
pub const ATTACH_ACK_TIMEOUT: Duration = Duration::from_millis(1500);

/// What one replica asks the others to do. Ids only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Notice {
    /// Show this delegated session on the device (the receiver reads the session).
    Attach {
        device_id: Uuid,
        org_id: Uuid,
        session_id: Uuid,
    },
    /// The sending replica now shows this session on the device (the answer to `Attach`).
    Attached { device_id: Uuid, session_id: Uuid },
    /// Remove this session's key from the device.
    Detach {
        device_id: Uuid,
        session_id: Uuid,
        reason: String,
    },
    /// Close the device's connection.
    Disconnect {
        device_id: Uuid,
        code: ErrorCode,
        reason: String,
    },
    /// The key stopped being usable: remove it from every tool showing it.
    KeyGone {
        org_id: Uuid,
        key_id: Uuid,
        reason: String,
    },
    /// The key is usable again: the user's own tools show it.
    KeyBack { org_id: Uuid, key_id: Uuid },
    /// An admin set the key's PIN: forget its volatile state (PIN tokens, key agreement, a
    /// soft block), as at a power cycle, so no token issued under the old PIN outlives it.
    PowerCycle { org_id: Uuid, key_id: Uuid },
    /// The device connected to the sending replica: close any older connection of it.
    Claimed { device_id: Uuid },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    from: Uuid,
    #[serde(flatten)]
    notice: Notice,
}

pub(super) async fn notify(store: &Store, from: Uuid, notice: &Notice) -> Result<(), StoreError> {
    let payload = serde_json::to_string(&Envelope {
        from,
        notice: notice.clone(),
    })
    .map_err(|e| StoreError::Invalid(e.to_string()))?;
    store.relay_notify(CHANNEL, &payload).await
}

/// Records that `device` is connected here and tells the other replicas.
pub(super) async fn claim(hub: &RelayHub, device: &PairDeviceRecord) -> Result<(), StoreError> {
    if hub.store.relay_claim(device, hub.replica_id).await.is_err() {
        // The replica row may not exist yet (first heartbeat still in flight) or was pruned.
        hub.store.relay_heartbeat(hub.replica_id).await?;
        hub.store.relay_claim(device, hub.replica_id).await?;
    }
    notify(
        &hub.store,
        hub.replica_id,
        &Notice::Claimed {
            device_id: device.id,
        },
    )
    .await
}

/// Starts the heartbeat and the listener; both stop once the hub is dropped.
pub(super) fn start(hub: &Arc<RelayHub>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::error!("relay hub created outside a Tokio runtime: replicas will not see it");
        return;
    };
    rt.spawn(heartbeat(Arc::downgrade(hub)));
    rt.spawn(listen(Arc::downgrade(hub)));
}

async fn heartbeat(hub: Weak<RelayHub>) {
    let mut beats: u64 = 0;
    loop {
        let Some(h) = hub.upgrade() else { return };
        match h.store.relay_heartbeat(h.replica_id).await {
            Ok(true) => {}
            Ok(false) => {
                if beats > 0 {
                    tracing::warn!("this replica's presence had lapsed; claiming its tools again");
                }
                reclaim_all(&h).await;
            }
            Err(e) => tracing::warn!(error = %e, "relay heartbeat failed"),
        }
        if beats.is_multiple_of(15) {
            let before =
                keyward_store::now() - chrono::Duration::from_std(PRUNE_AFTER).unwrap_or_default();
            if let Err(e) = h.store.relay_prune_replicas(before, None).await {
                tracing::debug!(error = %e, "pruning stale replicas failed");
            }
        }
        beats += 1;
        drop(h);
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
}

async fn reclaim_all(hub: &RelayHub) {
    let ids: Vec<Uuid> = hub.conns().keys().copied().collect();
    for id in ids {
        if let Ok(Some(device)) = hub.store.pair_device(id).await {
            let _ = hub.store.relay_claim(&device, hub.replica_id).await;
        }
    }
}

async fn listen(hub: Weak<RelayHub>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(h) = hub.upgrade() else { return };
        let listener = h.store.relay_listener(CHANNEL).await;
        drop(h);
        let mut listener = match listener {
            Ok(Some(l)) => l,
            Ok(None) => return, // SQLite: nothing to listen to
            Err(e) => {
                tracing::warn!(error = %e, "relay cannot LISTEN; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        if let Some(h) = hub.upgrade() {
            // Whatever was sent before this LISTEN (or while a previous one was down) is lost:
            // re-read first, then report ready.
            resync(&h).await;
            h.listening.send_replace(true);
        }
        let mut tick = tokio::time::interval(RESYNC_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                got = listener.recv() => match got {
                    Ok(Some(payload)) => {
                        let Some(h) = hub.upgrade() else { return };
                        handle(&h, &payload).await;
                    }
                    Ok(None) => {
                        // The connection dropped; the next recv reconnects. Re-read the state.
                        tracing::warn!("relay LISTEN connection lost; re-reading tool state");
                        let Some(h) = hub.upgrade() else { return };
                        h.listening.send_replace(false);
                        resync(&h).await;
                        h.listening.send_replace(true);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "relay LISTEN failed; reconnecting");
                        if let Some(h) = hub.upgrade() {
                            h.listening.send_replace(false);
                        }
                        tokio::time::sleep(backoff).await;
                        break;
                    }
                },
                _ = tick.tick() => {
                    let Some(h) = hub.upgrade() else { return };
                    resync(&h).await;
                }
            }
        }
    }
}

async fn handle(hub: &Arc<RelayHub>, payload: &str) {
    let Ok(env) = serde_json::from_str::<Envelope>(payload) else {
        tracing::warn!("ignoring a malformed relay notification");
        return;
    };
    if env.from == hub.replica_id {
        return;
    }
    match env.notice {
        Notice::Attach {
            device_id,
            org_id,
            session_id,
        } => {
            let Some((conn_org, actor)) = hub
                .conns()
                .get(&device_id)
                .map(|c| (c.org_id, c.actor.clone()))
            else {
                return;
            };
            if conn_org != org_id {
                tracing::warn!(%device_id, "ignoring an attach naming another organisation");
                return;
            }
            // Read back rather than trust the notice: the session must be live, for this device.
            let Ok(Some(s)) = hub.store.delegated_session(conn_org, session_id).await else {
                return;
            };
            if s.device_id != device_id || !s.is_live(chrono::Utc::now()) {
                return;
            }
            let a = Attached {
                session_id: s.id,
                key_id: s.key_id,
                org_id: s.org_id,
                actor,
                registration_only: true,
                expires_at: Some(s.expires_at),
            };
            if hub.attach_local(device_id, a, SessionMode::Delegated).await
                && let Err(e) = notify(
                    &hub.store,
                    hub.replica_id,
                    &Notice::Attached {
                        device_id,
                        session_id,
                    },
                )
                .await
            {
                // The other replica times out, ends the session and tells us to detach it.
                tracing::warn!(error = %e, %device_id, "could not acknowledge an attach");
            }
        }
        Notice::Attached { session_id, .. } => hub.acknowledged(session_id),
        Notice::Detach {
            device_id,
            session_id,
            reason,
        } => {
            hub.detach_local(device_id, session_id, &reason);
        }
        Notice::Disconnect {
            device_id,
            code,
            reason,
        } => {
            hub.disconnect_local(device_id, code, &reason);
        }
        Notice::KeyGone {
            org_id,
            key_id,
            reason,
        } => hub.key_unavailable_local(org_id, key_id, &reason),
        Notice::KeyBack { org_id, key_id } => hub.key_available_local(org_id, key_id).await,
        Notice::PowerCycle { key_id, .. } => hub.keys.power_cycle(key_id).await,
        Notice::Claimed { device_id } => {
            hub.disconnect_local(device_id, ErrorCode::Protocol, SUPERSEDED);
        }
    }
}

/// Makes every tool connected here show what the database says it should: revoked devices and
/// disabled admins' devices are closed, ended or expired sessions detached, a session started
/// while a notification was lost attached, a user's key that stopped being active removed.
pub(super) async fn resync(hub: &Arc<RelayHub>) {
    let snapshot: Vec<(Uuid, DeviceOwner, String, Option<Attached>)> = hub
        .conns()
        .iter()
        .map(|(id, c)| (*id, c.owner, c.actor.clone(), c.attached.clone()))
        .collect();
    for (device_id, owner, actor, attached) in snapshot {
        let device = match hub.store.pair_device(device_id).await {
            Ok(d) => d,
            Err(_) => return, // the database is away again: try on the next round
        };
        let Some(device) = device.filter(|d| d.revoked_at.is_none()) else {
            hub.disconnect_local(device_id, ErrorCode::Revoked, "this device was revoked");
            continue;
        };
        match owner {
            DeviceOwner::Admin(admin_id) => {
                let Ok(admin) = hub.store.admin(admin_id).await else {
                    return;
                };
                if admin.is_none_or(|a| a.disabled) {
                    // The notification closing it was lost; it is refused at login anyway.
                    hub.disconnect_local(device_id, ErrorCode::Revoked, super::api::OWNER_DISABLED);
                    continue;
                }
                let want = live_delegated(hub, &device, &actor).await;
                let have = attached.as_ref().map(|a| a.session_id);
                if want.as_ref().map(|a| a.session_id) == have {
                    continue;
                }
                if let Some(old) = have {
                    hub.detach_local(device_id, old, "ended");
                }
                if let Some(a) = want {
                    hub.attach_local(device_id, a, SessionMode::Delegated).await;
                }
            }
            DeviceOwner::User(user_id) => {
                let Ok(key) = hub.store.key_for_user(device.org_id, user_id).await else {
                    return;
                };
                let active = key.as_ref().filter(|k| k.status == "active");
                match (active, attached) {
                    (None, Some(a)) => {
                        hub.detach_local(device_id, a.session_id, "key not active");
                    }
                    (Some(k), have) if have.as_ref().is_none_or(|a| a.key_id != k.id) => {
                        let a = Attached {
                            session_id: Uuid::now_v7(),
                            key_id: k.id,
                            org_id: device.org_id,
                            actor,
                            registration_only: false,
                            expires_at: None,
                        };
                        hub.attach_local(device_id, a, SessionMode::User).await;
                    }
                    _ => {}
                }
            }
        }
    }
}
