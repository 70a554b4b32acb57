-- What the gateway keeps of each dependent device, written field by field
-- as it changes, so that a power cut loses nothing.

-- +goose Up
CREATE TABLE kv (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);

CREATE TABLE devices (
	uuid              TEXT    PRIMARY KEY,
	app_id            INTEGER NOT NULL,
	local_id          TEXT    NOT NULL,
	-- Whether the device answered when last told to the agent (its
	-- status and commit are the agent's to keep).
	is_online         INTEGER NOT NULL,
	-- Hash of the environment and config the device was last given.
	configured        TEXT    NOT NULL,
	-- Failed installs of failed_commit so far, and why the last failed.
	failed_commit     TEXT    NOT NULL,
	attempts          INTEGER NOT NULL,
	last_error        TEXT    NOT NULL,
	restart_requested INTEGER NOT NULL,
	UNIQUE (app_id, local_id)
);

-- +goose Down
DROP TABLE devices;
DROP TABLE kv;
