-- The fleet server's model. Written to port to PostgreSQL as it is, apart
-- from the identity columns: times are integer unix milliseconds in UTC
-- (NULL when unset), JSON is TEXT, an open part of a variable's scope is 0
-- or '' (never NULL, so that the unique constraint holds).
-- AUTOINCREMENT keeps SQLite from reusing the ID of a deleted row, as a
-- PostgreSQL identity column would not either.

-- +goose Up
CREATE TABLE tokens (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	name       TEXT    NOT NULL,
	hash       TEXT    NOT NULL UNIQUE,
	created_at INTEGER NOT NULL
);

CREATE TABLE fleets (
	id              INTEGER PRIMARY KEY AUTOINCREMENT,
	uuid            TEXT    NOT NULL UNIQUE,
	name            TEXT    NOT NULL UNIQUE,
	device_type     TEXT    NOT NULL,
	update_strategy TEXT    NOT NULL,
	pinned_release  TEXT    NOT NULL,
	created_at      INTEGER NOT NULL
);

CREATE TABLE provisioning_keys (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	fleet_id   INTEGER NOT NULL REFERENCES fleets (id) ON DELETE CASCADE,
	name       TEXT    NOT NULL,
	hash       TEXT    NOT NULL UNIQUE,
	expires_at INTEGER,
	revoked_at INTEGER,
	created_at INTEGER NOT NULL
);
CREATE INDEX provisioning_keys_fleet ON provisioning_keys (fleet_id, created_at);

CREATE TABLE devices (
	id             INTEGER PRIMARY KEY AUTOINCREMENT,
	uuid           TEXT    NOT NULL UNIQUE,
	name           TEXT    NOT NULL,
	-- No cascade: a fleet with devices cannot be deleted.
	fleet_id       INTEGER NOT NULL REFERENCES fleets (id),
	device_type    TEXT    NOT NULL,
	-- NULL when the key was revoked (unique constraints let NULLs repeat).
	key_hash       TEXT    UNIQUE,
	pinned_release TEXT    NOT NULL,
	tags           TEXT    NOT NULL, -- JSON object (null when none)
	created_at     INTEGER NOT NULL,
	last_seen      INTEGER,
	state          TEXT    NOT NULL, -- JSON reeve.DeviceReport
	reported_at    INTEGER
);
CREATE INDEX devices_name ON devices (name, uuid);
CREATE INDEX devices_fleet ON devices (fleet_id, name, uuid);

CREATE TABLE releases (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	fleet_id     INTEGER NOT NULL REFERENCES fleets (id) ON DELETE CASCADE,
	commit_ref   TEXT    NOT NULL,
	compose      TEXT    NOT NULL,
	release_json TEXT    NOT NULL, -- JSON reeve.Release
	created_at   INTEGER NOT NULL,
	UNIQUE (fleet_id, commit_ref)
);
-- Newest first and the latest release without sorting.
CREATE INDEX releases_fleet ON releases (fleet_id, id);

-- Variables reference fleets and devices without foreign keys, because 0
-- stands for "any"; the store removes them with their fleet or device.
CREATE TABLE variables (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	kind      TEXT    NOT NULL,
	fleet_id  INTEGER NOT NULL,
	device_id INTEGER NOT NULL,
	service   TEXT    NOT NULL,
	name      TEXT    NOT NULL,
	value     TEXT    NOT NULL,
	UNIQUE (kind, fleet_id, device_id, service, name),
	CHECK (fleet_id <> 0 OR device_id <> 0)
);
CREATE INDEX variables_device ON variables (device_id, kind);

-- +goose Down
DROP TABLE variables;
DROP TABLE releases;
DROP TABLE devices;
DROP TABLE provisioning_keys;
DROP TABLE fleets;
DROP TABLE tokens;
