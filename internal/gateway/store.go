package gateway

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"path/filepath"

	"reeve.dev/reeve/internal/sqlite"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// record is what the gateway keeps of one device.
type record struct {
	UUID             string
	AppID            int64
	LocalID          string
	IsOnline         bool
	Configured       string
	FailedCommit     string
	Attempts         int
	LastError        string
	RestartRequested bool
}

// store is the gateway's one database handle (<data>/gateway.db).
type store struct{ db *sql.DB }

func openStore(ctx context.Context, dir string) (*store, error) {
	db, err := sqlite.Open(ctx, filepath.Join(dir, "gateway.db"), migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

const recordCols = `uuid, app_id, local_id, is_online, configured, failed_commit, attempts, last_error, restart_requested`

func scanRecord(r interface{ Scan(...any) error }) (record, error) {
	var d record
	err := r.Scan(&d.UUID, &d.AppID, &d.LocalID, &d.IsOnline, &d.Configured, &d.FailedCommit, &d.Attempts, &d.LastError, &d.RestartRequested)
	return d, err
}

func (s *store) records(ctx context.Context) (map[string]record, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+recordCols+` FROM devices`)
	if err != nil {
		return nil, fmt.Errorf("read devices: %w", err)
	}
	defer rows.Close()
	out := map[string]record{}
	for rows.Next() {
		d, err := scanRecord(rows)
		if err != nil {
			return nil, fmt.Errorf("read devices: %w", err)
		}
		out[d.UUID] = d
	}
	return out, rows.Err()
}

func (s *store) record(ctx context.Context, uuid string) (record, bool, error) {
	d, err := scanRecord(s.db.QueryRowContext(ctx, `SELECT `+recordCols+` FROM devices WHERE uuid = ?`, uuid))
	if errors.Is(err, sql.ErrNoRows) {
		return d, false, nil
	}
	if err != nil {
		return d, false, fmt.Errorf("read device %s: %w", uuid, err)
	}
	return d, true, nil
}

// recordByLocal returns the record of an app's device by its local ID.
func (s *store) recordByLocal(ctx context.Context, appID int64, localID string) (record, bool, error) {
	d, err := scanRecord(s.db.QueryRowContext(ctx, `SELECT `+recordCols+` FROM devices WHERE app_id = ? AND local_id = ?`, appID, localID))
	if errors.Is(err, sql.ErrNoRows) {
		return d, false, nil
	}
	if err != nil {
		return d, false, fmt.Errorf("read device %s: %w", localID, err)
	}
	return d, true, nil
}

// ensure records a device the gateway learnt of (provisioned, or listed
// by the agent).
func (s *store) ensure(ctx context.Context, uuid string, appID int64, localID string) error {
	// The agent lists this device for that local ID: a record of another
	// UUID for it is of a device removed while the gateway missed the hook.
	if _, err := s.db.ExecContext(ctx, `DELETE FROM devices WHERE app_id = ? AND local_id = ? AND uuid <> ?`, appID, localID, uuid); err != nil {
		return fmt.Errorf("record device %s: %w", uuid, err)
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO devices (`+recordCols+`) VALUES (?, ?, ?, 0, '', '', 0, '', 0)
		ON CONFLICT (uuid) DO UPDATE SET app_id = excluded.app_id, local_id = excluded.local_id`, uuid, appID, localID)
	if err != nil {
		return fmt.Errorf("record device %s: %w", uuid, err)
	}
	return nil
}

// set writes one field of a device.
func (s *store) set(ctx context.Context, uuid, column string, value any) error {
	switch column {
	case "is_online", "configured", "failed_commit", "attempts", "last_error", "restart_requested":
	default:
		return fmt.Errorf("no device field %q", column)
	}
	if _, err := s.db.ExecContext(ctx, `UPDATE devices SET `+column+` = ? WHERE uuid = ?`, value, uuid); err != nil {
		return fmt.Errorf("write %s of device %s: %w", column, uuid, err)
	}
	return nil
}

func (s *store) remove(ctx context.Context, uuid string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM devices WHERE uuid = ?`, uuid); err != nil {
		return fmt.Errorf("forget device %s: %w", uuid, err)
	}
	return nil
}

func (s *store) get(ctx context.Context, key string) (string, error) {
	var v string
	err := s.db.QueryRowContext(ctx, `SELECT value FROM kv WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return v, err
}

func (s *store) put(ctx context.Context, key, value string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value)
	return err
}
