-- The dependent devices a gateway's agent carries. Times are unix
-- milliseconds (0 when unset); maps are JSON objects (null when empty).

-- +goose Up
CREATE TABLE apps (
	uuid        TEXT    PRIMARY KEY,
	id          INTEGER NOT NULL,
	name        TEXT    NOT NULL,
	commit_ref  TEXT    NOT NULL,
	release_id  INTEGER NOT NULL,
	image       TEXT    NOT NULL,
	config      TEXT    NOT NULL,
	-- reeve.DependentApp.Hash of the target stored last, and the one the
	-- gateway application may be told of (its firmware is on the device).
	target_hash TEXT    NOT NULL,
	hooks_hash  TEXT    NOT NULL
);
CREATE INDEX apps_id ON apps (id);

CREATE TABLE devices (
	uuid                TEXT    PRIMARY KEY,
	app_uuid            TEXT    NOT NULL,
	local_id            TEXT    NOT NULL,
	name                TEXT    NOT NULL,
	device_type         TEXT    NOT NULL,
	created_at          INTEGER NOT NULL,
	-- What the target says (in_target: the device was in a stored target).
	in_target           INTEGER NOT NULL,
	target_commit       TEXT    NOT NULL,
	target_release_id   INTEGER NOT NULL,
	target_image        TEXT    NOT NULL,
	target_env          TEXT    NOT NULL,
	target_config       TEXT    NOT NULL,
	-- What the gateway application says the device runs.
	status              TEXT    NOT NULL,
	is_online           INTEGER NOT NULL,
	last_seen           INTEGER NOT NULL,
	commit_ref          TEXT    NOT NULL,
	release_id          INTEGER NOT NULL,
	environment         TEXT    NOT NULL,
	config              TEXT    NOT NULL,
	-- Removed from the target: the gateway application is told (DELETE),
	-- and the row goes once it acknowledges.
	marked_for_deletion INTEGER NOT NULL,
	-- Hooks: the target hash the gateway application last acknowledged or
	-- accepted, when the last hook went, and how it ended.
	acked_hash          TEXT    NOT NULL,
	hook_at             INTEGER NOT NULL,
	hook_result         TEXT    NOT NULL
);
CREATE INDEX devices_app ON devices (app_uuid);

-- +goose Down
DROP TABLE devices;
DROP TABLE apps;
