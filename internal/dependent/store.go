package dependent

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/engine"
	"reeve.dev/reeve/internal/sqlite"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// App is a dependent app as the agent's API shows it.
type App struct {
	ID        int64             `json:"id"`
	UUID      string            `json:"uuid"`
	Name      string            `json:"name"`
	Commit    string            `json:"commit"`
	ReleaseID int64             `json:"releaseId,omitempty"`
	Image     string            `json:"image,omitempty"`
	Config    map[string]string `json:"config"`

	targetHash, hooksHash string
}

// Device is a dependent device as the agent's API shows it: what the
// gateway application reports it runs, and what its target says.
type Device struct {
	UUID              string            `json:"uuid"`
	AppID             int64             `json:"appId"`
	AppUUID           string            `json:"appUuid"`
	DeviceType        string            `json:"device_type"`
	LocalID           string            `json:"local_id,omitempty"`
	Name              string            `json:"name"`
	Status            string            `json:"status"`
	IsOnline          bool              `json:"is_online"`
	LastSeen          time.Time         `json:"last_seen,omitzero"`
	Commit            string            `json:"commit"`
	ReleaseID         int64             `json:"releaseId,omitempty"`
	Environment       map[string]string `json:"environment"`
	Config            map[string]string `json:"config"`
	TargetCommit      string            `json:"targetCommit"`
	TargetReleaseID   int64             `json:"targetReleaseId,omitempty"`
	TargetEnvironment map[string]string `json:"targetEnvironment"`
	TargetConfig      map[string]string `json:"targetConfig"`
	MarkedForDeletion bool              `json:"markedForDeletion"`
	// Hook says how the last hook about the device went: "acknowledged"
	// (200), "accepted" (202), or what went wrong; "" before the first.
	Hook string `json:"hook,omitempty"`

	inTarget    bool
	targetImage string
	ackedHash   string
	hookAt      time.Time
	createdAt   time.Time
}

// target returns what the device should run.
func (d Device) target() reeve.DependentTarget {
	return reeve.DependentTarget{Name: d.Name, Commit: d.TargetCommit, ReleaseID: d.TargetReleaseID, Image: d.targetImage, Environment: d.TargetEnvironment, Config: d.TargetConfig}
}

// current returns what the device runs, as a target to compare.
func (d Device) current() reeve.DependentTarget {
	return reeve.DependentTarget{Commit: d.Commit, Environment: d.Environment, Config: d.Config}
}

// store keeps apps and devices in <dir>/dependent.db.
type store struct {
	db *sql.DB
}

func openStore(ctx context.Context, dir string) (*store, error) {
	db, err := sqlite.Open(ctx, filepath.Join(dir, "dependent.db"), migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

const appCols = `uuid, id, name, commit_ref, release_id, image, config, target_hash, hooks_hash`

type scanner interface{ Scan(...any) error }

func scanApp(r scanner) (App, error) {
	var a App
	var cfg string
	if err := r.Scan(&a.UUID, &a.ID, &a.Name, &a.Commit, &a.ReleaseID, &a.Image, &cfg, &a.targetHash, &a.hooksHash); err != nil {
		return a, err
	}
	a.Config = decodeMap(cfg)
	return a, nil
}

func (s *store) apps(ctx context.Context) ([]App, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+appCols+` FROM apps ORDER BY id, uuid`)
	if err != nil {
		return nil, fmt.Errorf("read dependent apps: %w", err)
	}
	defer rows.Close()
	out := []App{}
	for rows.Next() {
		a, err := scanApp(rows)
		if err != nil {
			return nil, fmt.Errorf("read dependent apps: %w", err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// appByID returns the app with that ID (not_found when there is none).
func (s *store) appByID(ctx context.Context, id int64) (App, error) {
	a, err := scanApp(s.db.QueryRowContext(ctx, `SELECT `+appCols+` FROM apps WHERE id = ? ORDER BY uuid LIMIT 1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return a, reeve.Errorf(reeve.CodeNotFound, "no dependent app %d on this device: GET /v1/dependent-apps lists them", id)
	}
	if err != nil {
		return a, fmt.Errorf("read dependent app %d: %w", id, err)
	}
	return a, nil
}

func (s *store) planState(ctx context.Context) (map[string]engine.DependentState, error) {
	apps, err := s.apps(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]engine.DependentState, len(apps))
	for _, a := range apps {
		out[a.UUID] = engine.DependentState{TargetHash: a.targetHash, HooksHash: a.hooksHash}
	}
	return out, nil
}

const devCols = `d.uuid, a.id, d.app_uuid, d.device_type, d.local_id, d.name, d.status, d.is_online, d.last_seen,
	d.commit_ref, d.release_id, d.environment, d.config, d.target_commit, d.target_release_id, d.target_env,
	d.target_config, d.marked_for_deletion, d.hook_result, d.in_target, d.target_image, d.acked_hash, d.hook_at, d.created_at`

const devFrom = ` FROM devices d LEFT JOIN apps a ON a.uuid = d.app_uuid`

func scanDevice(r scanner) (Device, error) {
	var (
		d                           Device
		appID                       sql.NullInt64
		lastSeen, hookAt, createdAt int64
		env, cfg, tenv, tcfg        string
		online, marked, inTarget    bool
	)
	err := r.Scan(&d.UUID, &appID, &d.AppUUID, &d.DeviceType, &d.LocalID, &d.Name, &d.Status, &online, &lastSeen,
		&d.Commit, &d.ReleaseID, &env, &cfg, &d.TargetCommit, &d.TargetReleaseID, &tenv,
		&tcfg, &marked, &d.Hook, &inTarget, &d.targetImage, &d.ackedHash, &hookAt, &createdAt)
	if err != nil {
		return d, err
	}
	d.AppID = appID.Int64
	d.IsOnline, d.MarkedForDeletion, d.inTarget = online, marked, inTarget
	d.LastSeen, d.hookAt, d.createdAt = fromMillis(lastSeen), fromMillis(hookAt), fromMillis(createdAt)
	d.Environment, d.Config = decodeMap(env), decodeMap(cfg)
	d.TargetEnvironment, d.TargetConfig = decodeMap(tenv), decodeMap(tcfg)
	return d, nil
}

func (s *store) devices(ctx context.Context) ([]Device, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+devCols+devFrom+` ORDER BY d.created_at, d.uuid`)
	if err != nil {
		return nil, fmt.Errorf("read dependent devices: %w", err)
	}
	defer rows.Close()
	out := []Device{}
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("read dependent devices: %w", err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// device returns one device: not_found when unknown. A device marked for
// deletion is returned as it is; callers decide what that means.
func (s *store) device(ctx context.Context, uuid string) (Device, error) {
	d, err := scanDevice(s.db.QueryRowContext(ctx, `SELECT `+devCols+devFrom+` WHERE d.uuid = ?`, uuid))
	if errors.Is(err, sql.ErrNoRows) {
		return d, reeve.Errorf(reeve.CodeNotFound, "no dependent device %s on this device: GET /v1/devices lists them", uuid)
	}
	if err != nil {
		return d, fmt.Errorf("read dependent device %s: %w", uuid, err)
	}
	return d, nil
}

// addDevice records a device just provisioned; it is in no stored target
// yet.
func (s *store) addDevice(ctx context.Context, d Device, now time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO devices (uuid, app_uuid, local_id, name, device_type, created_at,
		in_target, target_commit, target_release_id, target_image, target_env, target_config,
		status, is_online, last_seen, commit_ref, release_id, environment, config,
		marked_for_deletion, acked_hash, hook_at, hook_result)
		VALUES (?, ?, ?, ?, ?, ?, 0, '', 0, '', 'null', 'null', '', 0, 0, '', 0, 'null', 'null', 0, '', 0, '')
		ON CONFLICT (uuid) DO UPDATE SET local_id = excluded.local_id, device_type = excluded.device_type, marked_for_deletion = 0`,
		d.UUID, d.AppUUID, d.LocalID, d.Name, d.DeviceType, now.UnixMilli())
	if err != nil {
		return fmt.Errorf("record dependent device %s: %w", d.UUID, err)
	}
	return nil
}

// updateCurrent writes what the gateway application reports of a device.
func (s *store) updateCurrent(ctx context.Context, d Device) error {
	_, err := s.db.ExecContext(ctx, `UPDATE devices SET status = ?, is_online = ?, last_seen = ?, commit_ref = ?,
		release_id = ?, environment = ?, config = ? WHERE uuid = ?`,
		d.Status, d.IsOnline, millis(d.LastSeen), d.Commit, d.ReleaseID, encodeMap(d.Environment), encodeMap(d.Config), d.UUID)
	if err != nil {
		return fmt.Errorf("update dependent device %s: %w", d.UUID, err)
	}
	return nil
}

// provisionGrace is how long a device provisioned through this agent may
// be missing from the stored target before it counts as removed: its
// gateway's next target normally carries it within seconds.
const provisionGrace = 10 * time.Minute

// updateTargets stores an app's target and its devices' in one
// transaction. Devices of the app that left it are marked for deletion:
// those a stored target held, and those provisioned more than
// provisionGrace ago.
func (s *store) updateTargets(ctx context.Context, app reeve.DependentApp, now time.Time) (marked int, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("store dependent targets: %w", err)
	}
	defer tx.Rollback()
	_, err = tx.ExecContext(ctx, `INSERT INTO apps (uuid, id, name, commit_ref, release_id, image, config, target_hash, hooks_hash)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, '')
		ON CONFLICT (uuid) DO UPDATE SET id = excluded.id, name = excluded.name, commit_ref = excluded.commit_ref,
			release_id = excluded.release_id, image = excluded.image, config = excluded.config, target_hash = excluded.target_hash`,
		app.UUID, app.ID, app.Name, app.Commit, app.ReleaseID, app.Image, encodeMap(app.Config), app.Hash())
	if err != nil {
		return 0, fmt.Errorf("store dependent app %s: %w", app.UUID, err)
	}
	for uuid, t := range app.Devices {
		_, err := tx.ExecContext(ctx, `INSERT INTO devices (uuid, app_uuid, local_id, name, device_type, created_at,
			in_target, target_commit, target_release_id, target_image, target_env, target_config,
			status, is_online, last_seen, commit_ref, release_id, environment, config,
			marked_for_deletion, acked_hash, hook_at, hook_result)
			VALUES (?, ?, '', ?, '', ?, 1, ?, ?, ?, ?, ?, '', 0, 0, '', 0, 'null', 'null', 0, '', 0, '')
			ON CONFLICT (uuid) DO UPDATE SET app_uuid = excluded.app_uuid, name = excluded.name, in_target = 1,
				target_commit = excluded.target_commit, target_release_id = excluded.target_release_id,
				target_image = excluded.target_image, target_env = excluded.target_env,
				target_config = excluded.target_config, marked_for_deletion = 0`,
			uuid, app.UUID, t.Name, now.UnixMilli(), t.Commit, t.ReleaseID, t.Image, encodeMap(t.Environment), encodeMap(t.Config))
		if err != nil {
			return 0, fmt.Errorf("store the target of dependent device %s: %w", uuid, err)
		}
	}
	rows, err := tx.QueryContext(ctx, `SELECT uuid, in_target, created_at FROM devices WHERE app_uuid = ? AND marked_for_deletion = 0`, app.UUID)
	if err != nil {
		return 0, fmt.Errorf("list dependent devices: %w", err)
	}
	var gone []string
	for rows.Next() {
		var (
			uuid      string
			inTarget  bool
			createdAt int64
		)
		if err := rows.Scan(&uuid, &inTarget, &createdAt); err != nil {
			rows.Close()
			return 0, fmt.Errorf("list dependent devices: %w", err)
		}
		if _, ok := app.Devices[uuid]; ok {
			continue
		}
		if inTarget || now.Sub(fromMillis(createdAt)) > provisionGrace {
			gone = append(gone, uuid)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("list dependent devices: %w", err)
	}
	for _, uuid := range gone {
		if _, err := tx.ExecContext(ctx, `UPDATE devices SET marked_for_deletion = 1, hook_result = '' WHERE uuid = ?`, uuid); err != nil {
			return 0, fmt.Errorf("mark dependent device %s for deletion: %w", uuid, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("store dependent targets: %w", err)
	}
	return len(gone), nil
}

// releaseHooks records that hooks may go out for the app's target hash,
// if it is still the stored one.
func (s *store) releaseHooks(ctx context.Context, appUUID, hash string) error {
	_, err := s.db.ExecContext(ctx, `UPDATE apps SET hooks_hash = ? WHERE uuid = ? AND target_hash = ?`, hash, appUUID, hash)
	if err != nil {
		return fmt.Errorf("release hooks of dependent app %s: %w", appUUID, err)
	}
	return nil
}

// removeApp forgets an app and its devices in one transaction, and
// returns the app's ID (0 when it was not stored).
func (s *store) removeApp(ctx context.Context, appUUID string) (int64, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("remove dependent app %s: %w", appUUID, err)
	}
	defer tx.Rollback()
	var id int64
	err = tx.QueryRowContext(ctx, `SELECT id FROM apps WHERE uuid = ?`, appUUID).Scan(&id)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("remove dependent app %s: %w", appUUID, err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM devices WHERE app_uuid = ?`, appUUID); err != nil {
		return 0, fmt.Errorf("remove the devices of dependent app %s: %w", appUUID, err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM apps WHERE uuid = ?`, appUUID); err != nil {
		return 0, fmt.Errorf("remove dependent app %s: %w", appUUID, err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("remove dependent app %s: %w", appUUID, err)
	}
	return id, nil
}

// hookSent records a hook's outcome. acked, when not "", is the target
// hash the gateway application acknowledged or accepted.
func (s *store) hookSent(ctx context.Context, uuid string, at time.Time, result, acked string) error {
	q := `UPDATE devices SET hook_at = ?, hook_result = ? WHERE uuid = ?`
	args := []any{at.UnixMilli(), result, uuid}
	if acked != "" {
		q = `UPDATE devices SET hook_at = ?, hook_result = ?, acked_hash = ? WHERE uuid = ?`
		args = []any{at.UnixMilli(), result, acked, uuid}
	}
	if _, err := s.db.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("record the hook of dependent device %s: %w", uuid, err)
	}
	return nil
}

// deleteDevice removes a device marked for deletion (its gateway
// application acknowledged).
func (s *store) deleteDevice(ctx context.Context, uuid string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM devices WHERE uuid = ? AND marked_for_deletion = 1`, uuid); err != nil {
		return fmt.Errorf("remove dependent device %s: %w", uuid, err)
	}
	return nil
}

func millis(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMillis(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

func encodeMap(m map[string]string) string {
	if len(m) == 0 {
		return "null"
	}
	b, _ := json.Marshal(m) // a map of strings always encodes
	return string(b)
}

// decodeMap returns the map, never nil, so that the API shows {} rather
// than null.
func decodeMap(s string) map[string]string {
	m := map[string]string{}
	_ = json.Unmarshal([]byte(s), &m) // written by encodeMap
	if m == nil {
		m = map[string]string{}
	}
	return m
}
