-- Devices' log lines, in logs.db beside the fleet's server.db (log writes
-- never wait on the fleet's database). Written to port to PostgreSQL as it
-- is, apart from the identity column: times are integer unix microseconds
-- (ts, the device's) or milliseconds (received_at, the server's), flags are
-- 0 or 1, an absent stream is '' and an absent seq 0 (never NULL).
-- AUTOINCREMENT keeps SQLite from reusing the ID of a pruned line: a
-- follower resumes after the last ID it saw.

-- +goose Up
CREATE TABLE log_lines (
	id          INTEGER PRIMARY KEY AUTOINCREMENT,
	device      TEXT    NOT NULL,
	stream      TEXT    NOT NULL,
	seq         INTEGER NOT NULL,
	ts          INTEGER NOT NULL,
	received_at INTEGER NOT NULL,
	service     TEXT    NOT NULL,
	stderr      INTEGER NOT NULL,
	system      INTEGER NOT NULL,
	message     TEXT    NOT NULL
);
-- A stream's line is kept at most once; lines without a stream or a seq
-- are never duplicates, so they are not in the index.
CREATE UNIQUE INDEX log_lines_stream_seq ON log_lines (device, stream, seq) WHERE stream <> '' AND seq <> 0;
CREATE INDEX log_lines_device ON log_lines (device, id);
CREATE INDEX log_lines_received ON log_lines (received_at);

-- How many lines each device has, kept with every insert and delete, so
-- that trimming to the per-device cap visits only the devices over it.
-- A device without lines has no row.
CREATE TABLE log_devices (
	device TEXT    PRIMARY KEY,
	lines  INTEGER NOT NULL
);

-- +goose Down
DROP TABLE log_devices;
DROP TABLE log_lines;
