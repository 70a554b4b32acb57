-- +goose Up
CREATE TABLE kv (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);

-- The one target state the agent drives toward, as validated JSON.
CREATE TABLE target (
	id         INTEGER PRIMARY KEY CHECK (id = 1),
	version    INTEGER NOT NULL,
	body       TEXT NOT NULL,
	updated_at TEXT NOT NULL
);

-- Images the agent pulled itself; only these are ever removed by it.
CREATE TABLE owned_images (
	ref        TEXT PRIMARY KEY,
	fetched_at TEXT NOT NULL
);

-- Update locks the agent holds. The lock files it makes carry its token;
-- a record only says a lock may need releasing.
CREATE TABLE agent_locks (
	app_uuid TEXT NOT NULL,
	service  TEXT NOT NULL,
	PRIMARY KEY (app_uuid, service)
);

-- +goose Down
DROP TABLE agent_locks;
DROP TABLE owned_images;
DROP TABLE target;
DROP TABLE kv;
