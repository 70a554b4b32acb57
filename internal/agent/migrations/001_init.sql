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

-- Update locks the agent holds, told apart from locks held by services.
-- owns_file is 0 when the agent overrode a service's own lock: the file is
-- the service's and stays.
CREATE TABLE agent_locks (
	app_uuid  TEXT NOT NULL,
	service   TEXT NOT NULL,
	owns_file INTEGER NOT NULL DEFAULT 1,
	PRIMARY KEY (app_uuid, service)
);

-- +goose Down
DROP TABLE agent_locks;
DROP TABLE owned_images;
DROP TABLE target;
DROP TABLE kv;
