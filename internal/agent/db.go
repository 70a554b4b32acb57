package agent

import (
	"context"
	"crypto/rand"
	"database/sql"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/sqlite"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// db is the agent's durable memory: identity, the target state, which images
// and locks are its own. What runs is never stored here: it is read from the
// runtime.
type db struct {
	sql *sql.DB
}

func openDB(ctx context.Context, dataDir string) (*db, error) {
	s, err := sqlite.Open(ctx, filepath.Join(dataDir, "agent.db"), migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	return &db{sql: s}, nil
}

func (d *db) close() error { return d.sql.Close() }

func (d *db) get(ctx context.Context, key string) (string, bool, error) {
	var v string
	err := d.sql.QueryRowContext(ctx, `SELECT value FROM kv WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read %s: %w", key, err)
	}
	return v, true, nil
}

// set stores value under key.
func (d *db) set(ctx context.Context, key, value string) error {
	if _, err := d.sql.ExecContext(ctx, `INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	return nil
}

// getOrCreate returns the value of key, storing gen() first if it has none.
func (d *db) getOrCreate(ctx context.Context, key string, gen func() string) (string, error) {
	v, ok, err := d.get(ctx, key)
	if err != nil || ok {
		return v, err
	}
	v = gen()
	if _, err := d.sql.ExecContext(ctx, `INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING`, key, v); err != nil {
		return "", fmt.Errorf("write %s: %w", key, err)
	}
	v, _, err = d.get(ctx, key)
	return v, err
}

// target returns the stored target state and its version (0: none yet).
func (d *db) target(ctx context.Context) (reeve.TargetState, int64, error) {
	var (
		version int64
		body    string
	)
	err := d.sql.QueryRowContext(ctx, `SELECT version, body FROM target WHERE id = 1`).Scan(&version, &body)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read target state: %w", err)
	}
	ts, err := reeve.ParseTargetState([]byte(body))
	if err != nil {
		return nil, 0, fmt.Errorf("stored target state is invalid: %w", err)
	}
	return ts, version, nil
}

// setTarget stores a new target state and returns its version.
func (d *db) setTarget(ctx context.Context, ts reeve.TargetState) (int64, error) {
	body, err := json.Marshal(ts)
	if err != nil {
		return 0, fmt.Errorf("encode target state: %w", err)
	}
	tx, err := d.sql.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("store target state: %w", err)
	}
	defer tx.Rollback()
	var version int64
	err = tx.QueryRowContext(ctx, `SELECT version FROM target WHERE id = 1`).Scan(&version)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("store target state: %w", err)
	}
	version++
	_, err = tx.ExecContext(ctx, `INSERT INTO target (id, version, body, updated_at) VALUES (1, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET version = excluded.version, body = excluded.body, updated_at = excluded.updated_at`,
		version, string(body), time.Now().UTC().Format(time.RFC3339Nano))
	if err != nil {
		return 0, fmt.Errorf("store target state: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("store target state: %w", err)
	}
	return version, nil
}

func (d *db) addOwnedImage(ctx context.Context, ref string) error {
	_, err := d.sql.ExecContext(ctx, `INSERT INTO owned_images (ref, fetched_at) VALUES (?, ?) ON CONFLICT (ref) DO NOTHING`,
		ref, time.Now().UTC().Format(time.RFC3339Nano))
	if err != nil {
		return fmt.Errorf("record image %s: %w", ref, err)
	}
	return nil
}

func (d *db) removeOwnedImage(ctx context.Context, ref string) error {
	if _, err := d.sql.ExecContext(ctx, `DELETE FROM owned_images WHERE ref = ?`, ref); err != nil {
		return fmt.Errorf("forget image %s: %w", ref, err)
	}
	return nil
}

func (d *db) ownedImages(ctx context.Context) (map[string]bool, error) {
	rows, err := d.sql.QueryContext(ctx, `SELECT ref FROM owned_images`)
	if err != nil {
		return nil, fmt.Errorf("read owned images: %w", err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var ref string
		if err := rows.Scan(&ref); err != nil {
			return nil, fmt.Errorf("read owned images: %w", err)
		}
		out[ref] = true
	}
	return out, rows.Err()
}

func (d *db) addAgentLock(ctx context.Context, app, service string) error {
	if _, err := d.sql.ExecContext(ctx, `INSERT INTO agent_locks (app_uuid, service) VALUES (?, ?) ON CONFLICT DO NOTHING`, app, service); err != nil {
		return fmt.Errorf("record lock: %w", err)
	}
	return nil
}

// agentLocks returns the services whose locks the agent holds, by app.
func (d *db) agentLocks(ctx context.Context) (map[string][]string, error) {
	rows, err := d.sql.QueryContext(ctx, `SELECT app_uuid, service FROM agent_locks ORDER BY app_uuid, service`)
	if err != nil {
		return nil, fmt.Errorf("read locks: %w", err)
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var app, svc string
		if err := rows.Scan(&app, &svc); err != nil {
			return nil, fmt.Errorf("read locks: %w", err)
		}
		out[app] = append(out[app], svc)
	}
	return out, rows.Err()
}

func (d *db) removeAgentLocks(ctx context.Context, app string) error {
	if _, err := d.sql.ExecContext(ctx, `DELETE FROM agent_locks WHERE app_uuid = ?`, app); err != nil {
		return fmt.Errorf("forget locks: %w", err)
	}
	return nil
}

func newUUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic("reeve: no randomness: " + err.Error())
	}
	return hex.EncodeToString(b)
}
