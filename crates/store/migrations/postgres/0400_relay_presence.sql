-- Relay presence across replicas. Keep column-for-column equal to
-- migrations/sqlite/0400_relay_presence.sql. Only replicas on PostgreSQL write these rows (a SQLite
-- server is one process and keeps presence in memory); SQLite has the tables for schema parity.

-- A running `keyward serve` process. It refreshes heartbeat_at every few seconds; a replica whose
-- heartbeat is older than the lease is treated as gone, with every connection it claimed.
CREATE TABLE relay_replicas (
    id UUID PRIMARY KEY NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
);

-- A pairing tool connected to a replica right now. One row per device: a tool that reconnects to
-- another replica moves its row there.
CREATE TABLE relay_presence (
    device_id UUID PRIMARY KEY NOT NULL REFERENCES pair_devices(id) ON DELETE CASCADE,
    replica_id UUID NOT NULL REFERENCES relay_replicas(id) ON DELETE CASCADE,
    org_id UUID NOT NULL REFERENCES organisations(id),
    admin_id UUID NULL REFERENCES admins(id),
    user_id UUID NULL REFERENCES users(id),
    connected_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX relay_presence_admin ON relay_presence (org_id, admin_id);
CREATE INDEX relay_presence_replica ON relay_presence (replica_id);
