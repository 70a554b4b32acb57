// Package sqlite keeps the fleet server's model in one SQLite file. Writes go
// through a single connection (SQLite has one writer anyway); reads go
// through a separate pool of read-only connections, which WAL lets read
// while a write is in progress, so device polls do not queue behind writes.
//
// The SQL is kept close to what PostgreSQL accepts: times are integer unix
// milliseconds in UTC, JSON is TEXT, rows come back with RETURNING.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"slices"
	"strings"
	"time"

	msqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"reeve.dev/reeve"
	rsqlite "reeve.dev/reeve/internal/sqlite"
	"reeve.dev/reeve/internal/store"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Store is the SQLite store. It is safe for concurrent use.
//
// UpdateDevice holds the writer while fn runs: fn may read through the
// store but must not write through it.
type Store struct {
	w *sql.DB // the one writer connection: every write, and reads in write transactions
	r *sql.DB // read-only connections; w itself when the store has none
}

var _ store.Store = (*Store)(nil)

// New opens (creating and migrating if needed) the store at path.
func New(ctx context.Context, path string) (*Store, error) {
	return open(ctx, path, max(4, runtime.NumCPU()))
}

// open opens the store with a pool of readers read-only connections; with
// none, reads share the writer's connection.
func open(ctx context.Context, path string, readers int) (*Store, error) {
	w, r, err := openDBs(ctx, path, migrationFiles, "migrations", readers)
	if err != nil {
		return nil, err
	}
	return &Store{w: w, r: r}, nil
}

// openDBs opens (creating and migrating with the goose files in dir of
// migrations) the database at path: its one writer connection, and a pool
// of readers read-only connections (r is w itself when readers is 0).
func openDBs(ctx context.Context, path string, migrations fs.FS, dir string, readers int) (w, r *sql.DB, err error) {
	w, err = rsqlite.Open(ctx, path, migrations, dir)
	if err != nil {
		return nil, nil, err
	}
	if readers <= 0 {
		return w, w, nil
	}
	r, err = rsqlite.OpenReader(ctx, path, readers)
	if err != nil {
		w.Close()
		return nil, nil, err
	}
	return w, r, nil
}

// closeDBs closes what openDBs opened: the readers, then the writer.
func closeDBs(w, r *sql.DB) error {
	var err error
	if r != w {
		err = r.Close()
	}
	return errors.Join(err, w.Close())
}

// Close closes the readers, then the writer.
func (s *Store) Close() error { return closeDBs(s.w, s.r) }

// querier is what *sql.DB and *sql.Tx have in common.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// scanner is what *sql.Row and *sql.Rows have in common.
type scanner interface {
	Scan(dest ...any) error
}

// inTx runs fn in a write transaction and commits when fn returns nil. An
// error from fn is returned as is.
func (s *Store) inTx(ctx context.Context, op string, fn func(tx *sql.Tx) error) error {
	return inTx(ctx, s.w, op, fn)
}

// inTx runs fn in a write transaction on w and commits when fn returns nil.
// An error from fn is returned as is.
func inTx(ctx context.Context, w *sql.DB, op string, fn func(tx *sql.Tx) error) error {
	tx, err := w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

// one returns v, notFound() when the row was missing, or err wrapped with op.
func one[T any](v T, err error, op string, notFound func() error) (T, error) {
	var zero T
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return zero, notFound()
	case err != nil:
		return zero, fmt.Errorf("%s: %w", op, err)
	}
	return v, nil
}

// list scans every row; it never returns a nil slice without an error.
func list[T any](rows *sql.Rows, err error, op string, scan func(scanner) (T, error)) ([]T, error) {
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	return out, nil
}

// affected returns notFound() when res changed no row.
func affected(res sql.Result, err error, op string, notFound func() error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if n == 0 {
		return notFound()
	}
	return nil
}

func notFound(format string, args ...any) func() error {
	return func() error { return reeve.Errorf(reeve.CodeNotFound, format, args...) }
}

// sqliteCode returns the extended result code of a SQLite error, or 0.
func sqliteCode(err error) int {
	var e *msqlite.Error
	if errors.As(err, &e) {
		return e.Code()
	}
	return 0
}

// isUnique reports whether err is a uniqueness violation on column, named
// table.column as SQLite names it in its message.
func isUnique(err error, column string) bool {
	switch sqliteCode(err) {
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		return strings.Contains(err.Error(), column)
	}
	return false
}

func isForeignKey(err error) bool {
	return sqliteCode(err) == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
}

// Times are stored as unix milliseconds; a zero time is NULL.

func millis(t time.Time) int64 { return t.UnixMilli() }

func nullMillis(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMilli()
}

func fromMillis(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

func fromNullMillis(ms sql.NullInt64) time.Time {
	if !ms.Valid {
		return time.Time{}
	}
	return fromMillis(ms.Int64)
}

// created is the creation time to store: t, or now when t is zero.
func created(t time.Time) int64 {
	if t.IsZero() {
		t = time.Now()
	}
	return millis(t)
}

// plural is noun for n of it: "device" or "devices".
func plural(n int, noun string) string {
	if n == 1 {
		return noun
	}
	return noun + "s"
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// Tokens.

const tokenCols = `id, name, hash, created_at`

func scanToken(row scanner) (reeve.Token, error) {
	var (
		t  reeve.Token
		at int64
	)
	err := row.Scan(&t.ID, &t.Name, &t.Hash, &at)
	t.CreatedAt = fromMillis(at)
	return t, err
}

func (s *Store) CreateToken(ctx context.Context, t reeve.Token) (reeve.Token, error) {
	got, err := scanToken(s.w.QueryRowContext(ctx,
		`INSERT INTO tokens (name, hash, created_at) VALUES (?, ?, ?) RETURNING `+tokenCols,
		t.Name, t.Hash, created(t.CreatedAt)))
	switch {
	case isUnique(err, "tokens.hash"):
		return reeve.Token{}, reeve.Errorf(reeve.CodeConflict, "a token with this hash already exists")
	case err != nil:
		return reeve.Token{}, fmt.Errorf("create token %q: %w", t.Name, err)
	}
	return got, nil
}

func (s *Store) TokenByHash(ctx context.Context, hash string) (reeve.Token, error) {
	t, err := scanToken(s.r.QueryRowContext(ctx, `SELECT `+tokenCols+` FROM tokens WHERE hash = ?`, hash))
	return one(t, err, "read token", notFound("token not found"))
}

func (s *Store) CountTokens(ctx context.Context) (int, error) {
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM tokens`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count tokens: %w", err)
	}
	return n, nil
}

// Fleets.

const fleetCols = `id, uuid, name, device_type, update_strategy, pinned_release, class, parent_id, created_at`

func scanFleet(row scanner) (reeve.Fleet, error) {
	var (
		f  reeve.Fleet
		at int64
	)
	err := row.Scan(&f.ID, &f.UUID, &f.Name, &f.DeviceType, &f.UpdateStrategy, &f.PinnedRelease, &f.Class, &f.ParentID, &at)
	f.CreatedAt = fromMillis(at)
	return f, err
}

func (s *Store) CreateFleet(ctx context.Context, f reeve.Fleet) (reeve.Fleet, error) {
	if f.Class == "" {
		f.Class = reeve.ClassFleet
	}
	var got reeve.Fleet
	err := s.inTx(ctx, "create fleet", func(tx *sql.Tx) error {
		if f.ParentID != 0 {
			// In the transaction: a parent deleted meanwhile would leave
			// the fleet without one.
			var id int64
			err := tx.QueryRowContext(ctx, `SELECT id FROM fleets WHERE id = ?`, f.ParentID).Scan(&id)
			if _, err := one(id, err, "create fleet", notFound("parent fleet %d not found", f.ParentID)); err != nil {
				return err
			}
		}
		var err error
		got, err = scanFleet(tx.QueryRowContext(ctx,
			`INSERT INTO fleets (uuid, name, device_type, update_strategy, pinned_release, class, parent_id, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING `+fleetCols,
			f.UUID, f.Name, f.DeviceType, f.UpdateStrategy, f.PinnedRelease, f.Class, f.ParentID, created(f.CreatedAt)))
		switch {
		case isUnique(err, "fleets.name"):
			return reeve.Errorf(reeve.CodeConflict, "a fleet named %q already exists", f.Name)
		case isUnique(err, "fleets.uuid"):
			return reeve.Errorf(reeve.CodeConflict, "a fleet with UUID %s already exists", f.UUID)
		case err != nil:
			return fmt.Errorf("create fleet %q: %w", f.Name, err)
		}
		return nil
	})
	if err != nil {
		return reeve.Fleet{}, err
	}
	return got, nil
}

func (s *Store) Fleet(ctx context.Context, id int64) (reeve.Fleet, error) {
	f, err := scanFleet(s.r.QueryRowContext(ctx, `SELECT `+fleetCols+` FROM fleets WHERE id = ?`, id))
	return one(f, err, "read fleet", notFound("fleet %d not found", id))
}

func (s *Store) FleetByName(ctx context.Context, name string) (reeve.Fleet, error) {
	f, err := scanFleet(s.r.QueryRowContext(ctx, `SELECT `+fleetCols+` FROM fleets WHERE name = ?`, name))
	return one(f, err, "read fleet", notFound("fleet %q not found", name))
}

func (s *Store) Fleets(ctx context.Context) ([]reeve.Fleet, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+fleetCols+` FROM fleets ORDER BY name`)
	return list(rows, err, "list fleets", scanFleet)
}

func (s *Store) UpdateFleet(ctx context.Context, f reeve.Fleet) error {
	res, err := s.w.ExecContext(ctx,
		`UPDATE fleets SET update_strategy = ?, device_type = ?, pinned_release = ? WHERE id = ?`,
		f.UpdateStrategy, f.DeviceType, f.PinnedRelease, f.ID)
	return affected(res, err, "update fleet", notFound("fleet %d not found", f.ID))
}

func (s *Store) DeleteFleet(ctx context.Context, id int64) error {
	const op = "delete fleet"
	return s.inTx(ctx, op, func(tx *sql.Tx) error {
		var name string
		err := tx.QueryRowContext(ctx, `SELECT name FROM fleets WHERE id = ?`, id).Scan(&name)
		if _, err := one(name, err, op, notFound("fleet %d not found", id)); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM devices WHERE fleet_id = ?`, id).Scan(&n); err != nil {
			return fmt.Errorf("%s %q: %w", op, name, err)
		}
		if n > 0 {
			return reeve.Errorf(reeve.CodeConflict, "fleet %q still has %d %s: move or remove them first", name, n, plural(n, "device"))
		}
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM fleets WHERE parent_id = ?`, id).Scan(&n); err != nil {
			return fmt.Errorf("%s %q: %w", op, name, err)
		}
		if n > 0 {
			return reeve.Errorf(reeve.CodeConflict, "fleet %q is the gateway fleet of %d dependent %s: remove them first", name, n, plural(n, "fleet"))
		}
		for _, q := range []string{
			`DELETE FROM variables WHERE fleet_id = ?`,
			`DELETE FROM releases WHERE fleet_id = ?`,
			`DELETE FROM provisioning_keys WHERE fleet_id = ?`,
			`DELETE FROM fleets WHERE id = ?`,
		} {
			if _, err := tx.ExecContext(ctx, q, id); err != nil {
				return fmt.Errorf("%s %q: %w", op, name, err)
			}
		}
		return nil
	})
}

// Provisioning keys.

const keyCols = `id, fleet_id, name, hash, expires_at, revoked_at, created_at`

func scanKey(row scanner) (reeve.ProvisioningKey, error) {
	var (
		k                reeve.ProvisioningKey
		expires, revoked sql.NullInt64
		at               int64
	)
	err := row.Scan(&k.ID, &k.FleetID, &k.Name, &k.Hash, &expires, &revoked, &at)
	k.ExpiresAt = fromNullMillis(expires)
	k.RevokedAt = fromNullMillis(revoked)
	k.CreatedAt = fromMillis(at)
	return k, err
}

func (s *Store) CreateProvisioningKey(ctx context.Context, k reeve.ProvisioningKey) (reeve.ProvisioningKey, error) {
	got, err := scanKey(s.w.QueryRowContext(ctx,
		`INSERT INTO provisioning_keys (fleet_id, name, hash, expires_at, revoked_at, created_at)
		VALUES (?, ?, ?, ?, ?, ?) RETURNING `+keyCols,
		k.FleetID, k.Name, k.Hash, nullMillis(k.ExpiresAt), nullMillis(k.RevokedAt), created(k.CreatedAt)))
	switch {
	case isUnique(err, "provisioning_keys.hash"):
		return reeve.ProvisioningKey{}, reeve.Errorf(reeve.CodeConflict, "a provisioning key with this hash already exists")
	case isForeignKey(err):
		return reeve.ProvisioningKey{}, reeve.Errorf(reeve.CodeNotFound, "fleet %d not found", k.FleetID)
	case err != nil:
		return reeve.ProvisioningKey{}, fmt.Errorf("create provisioning key: %w", err)
	}
	return got, nil
}

func (s *Store) ProvisioningKeyByHash(ctx context.Context, hash string) (reeve.ProvisioningKey, error) {
	k, err := scanKey(s.r.QueryRowContext(ctx, `SELECT `+keyCols+` FROM provisioning_keys WHERE hash = ?`, hash))
	return one(k, err, "read provisioning key", notFound("provisioning key not found"))
}

func (s *Store) ProvisioningKey(ctx context.Context, id int64) (reeve.ProvisioningKey, error) {
	k, err := scanKey(s.r.QueryRowContext(ctx, `SELECT `+keyCols+` FROM provisioning_keys WHERE id = ?`, id))
	return one(k, err, "read provisioning key", notFound("provisioning key %d not found", id))
}

func (s *Store) ProvisioningKeys(ctx context.Context, fleetID int64) ([]reeve.ProvisioningKey, error) {
	rows, err := s.r.QueryContext(ctx,
		`SELECT `+keyCols+` FROM provisioning_keys WHERE fleet_id = ? ORDER BY created_at, id`, fleetID)
	return list(rows, err, "list provisioning keys", scanKey)
}

func (s *Store) RevokeProvisioningKey(ctx context.Context, id int64, at time.Time) error {
	if at.IsZero() {
		at = time.Now()
	}
	res, err := s.w.ExecContext(ctx,
		`UPDATE provisioning_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?`, millis(at), id)
	return affected(res, err, "revoke provisioning key", notFound("provisioning key %d not found", id))
}

// Devices.

const deviceCols = `id, uuid, name, fleet_id, device_type, COALESCE(key_hash, ''), pinned_release,
	gateway_id, local_id, tags, created_at, last_seen, state, reported_at`

func scanDevice(row scanner) (reeve.Device, error) {
	var (
		d                  reeve.Device
		tags, state        string
		at                 int64
		lastSeen, reported sql.NullInt64
	)
	if err := row.Scan(&d.ID, &d.UUID, &d.Name, &d.FleetID, &d.DeviceType, &d.KeyHash, &d.PinnedRelease,
		&d.GatewayID, &d.LocalID, &tags, &at, &lastSeen, &state, &reported); err != nil {
		return reeve.Device{}, err
	}
	d.CreatedAt = fromMillis(at)
	d.LastSeen = fromNullMillis(lastSeen)
	d.ReportedAt = fromNullMillis(reported)
	if err := json.Unmarshal([]byte(tags), &d.Tags); err != nil {
		return reeve.Device{}, fmt.Errorf("device %s: stored tags are invalid: %w", d.UUID, err)
	}
	if err := json.Unmarshal([]byte(state), &d.State); err != nil {
		return reeve.Device{}, fmt.Errorf("device %s: stored state is invalid: %w", d.UUID, err)
	}
	return d, nil
}

// deviceArgs are the values of the columns UpdateDevice writes, in the
// order name, fleet_id, device_type, key_hash, pinned_release, tags,
// last_seen, state, reported_at.
func deviceArgs(d reeve.Device) ([]any, error) {
	tags, err := json.Marshal(d.Tags)
	if err != nil {
		return nil, fmt.Errorf("encode tags of device %s: %w", d.UUID, err)
	}
	state, err := json.Marshal(d.State)
	if err != nil {
		return nil, fmt.Errorf("encode state of device %s: %w", d.UUID, err)
	}
	return []any{d.Name, d.FleetID, d.DeviceType, nullString(d.KeyHash), d.PinnedRelease,
		string(tags), nullMillis(d.LastSeen), string(state), nullMillis(d.ReportedAt)}, nil
}

// deviceWriteError maps the constraint errors a device write can hit.
func deviceWriteError(err error, d reeve.Device, op string) error {
	switch {
	case isUnique(err, "devices.uuid"):
		return reeve.Errorf(reeve.CodeConflict, "a device with UUID %s already exists", d.UUID)
	case isUnique(err, "devices.key_hash"):
		return reeve.Errorf(reeve.CodeConflict, "device %s: another device already has this API key", d.UUID)
	case isForeignKey(err):
		return reeve.Errorf(reeve.CodeNotFound, "fleet %d not found", d.FleetID)
	}
	return fmt.Errorf("%s %s: %w", op, d.UUID, err)
}

func (s *Store) CreateDevice(ctx context.Context, d reeve.Device) (reeve.Device, error) {
	if d.GatewayID == 0 {
		return createDevice(ctx, s.w, d)
	}
	var got reeve.Device
	err := s.inTx(ctx, "create device", func(tx *sql.Tx) error {
		// In the transaction: a gateway deleted meanwhile would leave
		// the device carried by none.
		var id int64
		err := tx.QueryRowContext(ctx, `SELECT id FROM devices WHERE id = ?`, d.GatewayID).Scan(&id)
		if _, err := one(id, err, "create device", notFound("gateway device %d not found", d.GatewayID)); err != nil {
			return err
		}
		got, err = createDevice(ctx, tx, d)
		return err
	})
	if err != nil {
		return reeve.Device{}, err
	}
	return got, nil
}

func createDevice(ctx context.Context, q querier, d reeve.Device) (reeve.Device, error) {
	args, err := deviceArgs(d)
	if err != nil {
		return reeve.Device{}, err
	}
	got, err := scanDevice(q.QueryRowContext(ctx,
		`INSERT INTO devices (name, fleet_id, device_type, key_hash, pinned_release, tags, last_seen, state,
		reported_at, uuid, gateway_id, local_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING `+deviceCols,
		append(args, d.UUID, d.GatewayID, d.LocalID, created(d.CreatedAt))...))
	if err != nil {
		return reeve.Device{}, deviceWriteError(err, d, "create device")
	}
	return got, nil
}

func (s *Store) Device(ctx context.Context, uuid string) (reeve.Device, error) {
	d, err := scanDevice(s.r.QueryRowContext(ctx, `SELECT `+deviceCols+` FROM devices WHERE uuid = ?`, uuid))
	return one(d, err, "read device", notFound("device %s not found", uuid))
}

func (s *Store) DeviceByID(ctx context.Context, id int64) (reeve.Device, error) {
	d, err := scanDevice(s.r.QueryRowContext(ctx, `SELECT `+deviceCols+` FROM devices WHERE id = ?`, id))
	return one(d, err, "read device", notFound("device %d not found", id))
}

func (s *Store) DeviceByKeyHash(ctx context.Context, hash string) (reeve.Device, error) {
	nf := notFound("no device has this key")
	if hash == "" {
		return reeve.Device{}, nf()
	}
	d, err := scanDevice(s.r.QueryRowContext(ctx, `SELECT `+deviceCols+` FROM devices WHERE key_hash = ?`, hash))
	return one(d, err, "read device", nf)
}

func (s *Store) Devices(ctx context.Context, fleetID int64) ([]reeve.Device, error) {
	var (
		rows *sql.Rows
		err  error
	)
	if fleetID == 0 {
		rows, err = s.r.QueryContext(ctx, `SELECT `+deviceCols+` FROM devices ORDER BY name, uuid`)
	} else {
		rows, err = s.r.QueryContext(ctx,
			`SELECT `+deviceCols+` FROM devices WHERE fleet_id = ? ORDER BY name, uuid`, fleetID)
	}
	return list(rows, err, "list devices", scanDevice)
}

func (s *Store) DependentDevices(ctx context.Context, gatewayID int64) ([]reeve.Device, error) {
	if gatewayID == 0 { // 0 is every device that has no gateway
		return []reeve.Device{}, nil
	}
	rows, err := s.r.QueryContext(ctx,
		`SELECT `+deviceCols+` FROM devices WHERE gateway_id = ? ORDER BY name, uuid`, gatewayID)
	return list(rows, err, "list dependent devices", scanDevice)
}

func (s *Store) UpdateDevice(ctx context.Context, uuid string, fn func(*reeve.Device) error) (reeve.Device, error) {
	var out reeve.Device
	err := s.inTx(ctx, "update device", func(tx *sql.Tx) error {
		var err error
		out, err = updateDeviceTx(ctx, tx, uuid, fn)
		return err
	})
	if err != nil {
		return reeve.Device{}, err
	}
	return out, nil
}

func (s *Store) UpdateDevices(ctx context.Context, updates []store.DeviceUpdate) ([]error, error) {
	errs := make([]error, len(updates))
	err := s.inTx(ctx, "update devices", func(tx *sql.Tx) error {
		for i, u := range updates {
			var fnErr error
			_, err := updateDeviceTx(ctx, tx, u.UUID, func(d *reeve.Device) error {
				fnErr = u.Fn(d)
				return fnErr
			})
			switch code := reeve.ErrorCode(err); {
			case err == nil:
			case fnErr != nil || code == reeve.CodeNotFound || code == reeve.CodeConflict:
				errs[i] = err // this update's own failure
			default:
				return err // the database's: the transaction goes as a whole
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return errs, nil
}

// updateDeviceTx reads a device, lets fn change it and writes it back,
// inside tx. An error from fn writes nothing and is returned as is.
func updateDeviceTx(ctx context.Context, tx *sql.Tx, uuid string, fn func(*reeve.Device) error) (reeve.Device, error) {
	const op = "update device"
	d, err := scanDevice(tx.QueryRowContext(ctx, `SELECT `+deviceCols+` FROM devices WHERE uuid = ?`, uuid))
	if d, err = one(d, err, op, notFound("device %s not found", uuid)); err != nil {
		return reeve.Device{}, err
	}
	id := d.ID
	if err := fn(&d); err != nil {
		return reeve.Device{}, err
	}
	d.UUID = uuid // for messages: the UUID is not written
	args, err := deviceArgs(d)
	if err != nil {
		return reeve.Device{}, err
	}
	out, err := scanDevice(tx.QueryRowContext(ctx,
		`UPDATE devices SET name = ?, fleet_id = ?, device_type = ?, key_hash = ?, pinned_release = ?,
		tags = ?, last_seen = ?, state = ?, reported_at = ? WHERE id = ? RETURNING `+deviceCols,
		append(args, id)...))
	if err != nil {
		return reeve.Device{}, deviceWriteError(err, d, op)
	}
	return out, nil
}

func (s *Store) TouchDevices(ctx context.Context, seen map[string]time.Time) error {
	uuids := make([]string, 0, len(seen))
	for uuid, t := range seen {
		if !t.IsZero() {
			uuids = append(uuids, uuid)
		}
	}
	if len(uuids) == 0 {
		return nil
	}
	// In index order, the updates visit each page of the index once.
	slices.Sort(uuids)
	// One UPDATE per batch joins the devices with the batch's values
	// (UPDATE ... FROM, which PostgreSQL has too; there the values need a
	// ::bigint cast). It takes about half the time of one UPDATE per device.
	const op = "record when devices were seen"
	return s.inTx(ctx, op, func(tx *sql.Tx) error {
		for chunk := range slices.Chunk(uuids, touchBatch) {
			var q strings.Builder
			q.WriteString(`WITH seen (uuid, at) AS (VALUES `)
			args := make([]any, 0, 2*len(chunk))
			for i, uuid := range chunk {
				if i > 0 {
					q.WriteString(", ")
				}
				q.WriteString("(?, ?)")
				args = append(args, uuid, millis(seen[uuid]))
			}
			q.WriteString(`) UPDATE devices SET last_seen = seen.at FROM seen
				WHERE devices.uuid = seen.uuid AND (devices.last_seen IS NULL OR devices.last_seen < seen.at)`)
			if _, err := tx.ExecContext(ctx, q.String(), args...); err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
		}
		return nil
	})
}

// touchBatch is how many devices one UPDATE of TouchDevices touches.
const touchBatch = 500

func (s *Store) DeleteDevice(ctx context.Context, uuid string) error {
	const op = "delete device"
	return s.inTx(ctx, op, func(tx *sql.Tx) error {
		var id int64
		err := tx.QueryRowContext(ctx, `SELECT id FROM devices WHERE uuid = ?`, uuid).Scan(&id)
		if _, err := one(id, err, op, notFound("device %s not found", uuid)); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM devices WHERE gateway_id = ?`, id).Scan(&n); err != nil {
			return fmt.Errorf("%s %s: %w", op, uuid, err)
		}
		if n > 0 {
			return reeve.Errorf(reeve.CodeConflict, "device %s still carries %d dependent %s: remove them first", uuid, n, plural(n, "device"))
		}
		for _, q := range []string{
			`DELETE FROM variables WHERE device_id = ?`,
			`DELETE FROM devices WHERE id = ?`,
		} {
			if _, err := tx.ExecContext(ctx, q, id); err != nil {
				return fmt.Errorf("%s %s: %w", op, uuid, err)
			}
		}
		return nil
	})
}

// Releases.

const (
	releaseCols = `id, fleet_id, commit_ref, compose, release_json, created_at`
	// releaseListCols leaves the compose file out.
	releaseListCols = `id, fleet_id, commit_ref, '', release_json, created_at`
)

func scanRelease(row scanner) (reeve.FleetRelease, error) {
	var (
		r   reeve.FleetRelease
		rel string
		at  int64
	)
	if err := row.Scan(&r.ID, &r.FleetID, &r.Commit, &r.Compose, &rel, &at); err != nil {
		return reeve.FleetRelease{}, err
	}
	r.CreatedAt = fromMillis(at)
	if err := json.Unmarshal([]byte(rel), &r.Release); err != nil {
		return reeve.FleetRelease{}, fmt.Errorf("release %d: stored release is invalid: %w", r.ID, err)
	}
	r.Release.ID = r.ID
	return r, nil
}

func (s *Store) CreateRelease(ctx context.Context, r reeve.FleetRelease) (reeve.FleetRelease, error) {
	rel, err := json.Marshal(r.Release)
	if err != nil {
		return reeve.FleetRelease{}, fmt.Errorf("encode release %s: %w", r.Commit, err)
	}
	got, err := scanRelease(s.w.QueryRowContext(ctx,
		`INSERT INTO releases (fleet_id, commit_ref, compose, release_json, created_at)
		VALUES (?, ?, ?, ?, ?) RETURNING `+releaseCols,
		r.FleetID, r.Commit, r.Compose, string(rel), created(r.CreatedAt)))
	switch {
	case isUnique(err, "releases.commit_ref"):
		return reeve.FleetRelease{}, reeve.Errorf(reeve.CodeConflict, "fleet %d already has a release %s", r.FleetID, r.Commit)
	case isForeignKey(err):
		return reeve.FleetRelease{}, reeve.Errorf(reeve.CodeNotFound, "fleet %d not found", r.FleetID)
	case err != nil:
		return reeve.FleetRelease{}, fmt.Errorf("create release %s: %w", r.Commit, err)
	}
	return got, nil
}

func (s *Store) Release(ctx context.Context, fleetID int64, commit string) (reeve.FleetRelease, error) {
	r, err := scanRelease(s.r.QueryRowContext(ctx,
		`SELECT `+releaseCols+` FROM releases WHERE fleet_id = ? AND commit_ref = ?`, fleetID, commit))
	return one(r, err, "read release", notFound("release %s of fleet %d not found", commit, fleetID))
}

func (s *Store) ReleaseByID(ctx context.Context, id int64) (reeve.FleetRelease, error) {
	r, err := scanRelease(s.r.QueryRowContext(ctx, `SELECT `+releaseCols+` FROM releases WHERE id = ?`, id))
	return one(r, err, "read release", notFound("release %d not found", id))
}

func (s *Store) Releases(ctx context.Context, fleetID int64) ([]reeve.FleetRelease, error) {
	rows, err := s.r.QueryContext(ctx,
		`SELECT `+releaseListCols+` FROM releases WHERE fleet_id = ? ORDER BY id DESC`, fleetID)
	return list(rows, err, "list releases", scanRelease)
}

func (s *Store) LatestRelease(ctx context.Context, fleetID int64) (reeve.FleetRelease, error) {
	r, err := scanRelease(s.r.QueryRowContext(ctx,
		`SELECT `+releaseCols+` FROM releases WHERE fleet_id = ? ORDER BY id DESC LIMIT 1`, fleetID))
	return one(r, err, "read latest release", notFound("fleet %d has no releases", fleetID))
}

// Variables.

const varCols = `id, kind, fleet_id, device_id, service, name, value`

func scanVar(row scanner) (reeve.Variable, error) {
	var v reeve.Variable
	err := row.Scan(&v.ID, &v.Kind, &v.FleetID, &v.DeviceID, &v.Service, &v.Name, &v.Value)
	return v, err
}

// scopeName describes a variable scope for messages.
func scopeName(fleetID, deviceID int64, service string) string {
	var owner string
	switch {
	case deviceID != 0:
		owner = fmt.Sprintf("device %d", deviceID)
	default:
		owner = fmt.Sprintf("fleet %d", fleetID)
	}
	if service != "" {
		return fmt.Sprintf("service %s of %s", service, owner)
	}
	return owner
}

func (s *Store) SetVar(ctx context.Context, v reeve.Variable) (reeve.Variable, error) {
	if v.FleetID == 0 && v.DeviceID == 0 {
		return reeve.Variable{}, reeve.Errorf(reeve.CodeInvalid, "variable %s has no scope: it needs a fleet or a device", v.Name)
	}
	const op = "set variable"
	var out reeve.Variable
	err := s.inTx(ctx, op, func(tx *sql.Tx) error {
		for _, owner := range []struct {
			id    int64
			query string
			what  string
		}{
			{v.FleetID, `SELECT id FROM fleets WHERE id = ?`, "fleet"},
			{v.DeviceID, `SELECT id FROM devices WHERE id = ?`, "device"},
		} {
			if owner.id == 0 {
				continue
			}
			var id int64
			err := tx.QueryRowContext(ctx, owner.query, owner.id).Scan(&id)
			if _, err := one(id, err, op, notFound("%s %d not found", owner.what, owner.id)); err != nil {
				return err
			}
		}
		var err error
		out, err = scanVar(tx.QueryRowContext(ctx,
			`INSERT INTO variables (kind, fleet_id, device_id, service, name, value) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (kind, fleet_id, device_id, service, name) DO UPDATE SET value = excluded.value
			RETURNING `+varCols,
			v.Kind, v.FleetID, v.DeviceID, v.Service, v.Name, v.Value))
		if err != nil {
			return fmt.Errorf("%s %s of %s: %w", op, v.Name, scopeName(v.FleetID, v.DeviceID, v.Service), err)
		}
		return nil
	})
	if err != nil {
		return reeve.Variable{}, err
	}
	return out, nil
}

func (s *Store) Vars(ctx context.Context, kind string, fleetID, deviceID int64, service string) ([]reeve.Variable, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+varCols+` FROM variables
		WHERE kind = ? AND fleet_id = ? AND device_id = ? AND service = ? ORDER BY name`,
		kind, fleetID, deviceID, service)
	return list(rows, err, "list variables", scanVar)
}

// DeviceVars lists the variables that reach a device, by name and then from
// the lowest precedence scope to the highest (fleet, service, device,
// device+service).
func (s *Store) DeviceVars(ctx context.Context, kind string, fleetID, deviceID int64) ([]reeve.Variable, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+varCols+` FROM variables
		WHERE kind = ? AND fleet_id = ? AND fleet_id <> 0 AND device_id = 0
		UNION ALL
		SELECT `+varCols+` FROM variables
		WHERE kind = ? AND device_id = ? AND device_id <> 0
		ORDER BY name, device_id, service`,
		kind, fleetID, kind, deviceID)
	return list(rows, err, "list device variables", scanVar)
}

func (s *Store) DeleteVar(ctx context.Context, kind string, fleetID, deviceID int64, service, name string) error {
	res, err := s.w.ExecContext(ctx, `DELETE FROM variables
		WHERE kind = ? AND fleet_id = ? AND device_id = ? AND service = ? AND name = ?`,
		kind, fleetID, deviceID, service, name)
	return affected(res, err, "delete variable",
		notFound("%s variable %s of %s not found", kind, name, scopeName(fleetID, deviceID, service)))
}
