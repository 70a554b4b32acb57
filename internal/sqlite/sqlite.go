// Package sqlite opens SQLite databases the way reeve needs them on devices
// that lose power: WAL, synchronous=FULL, a busy timeout, foreign keys, and
// embedded migrations applied at open. Pure Go (modernc.org/sqlite).
package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"

	"github.com/pressly/goose/v3"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Open opens (creating if needed) the database at path and applies the
// migrations in the directory dir of fsys (goose SQL files; usually an
// embedded "migrations" directory).
func Open(ctx context.Context, path string, fsys fs.FS, dir string) (*sql.DB, error) {
	migrations, err := fs.Sub(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create database directory: %w", err)
	}
	q := url.Values{}
	for _, p := range []string{
		"journal_mode(WAL)",
		"synchronous(FULL)",
		"busy_timeout(10000)",
		"foreign_keys(1)",
	} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	// One writer at a time is what SQLite does anyway; a single connection
	// avoids SQLITE_BUSY between our own goroutines.
	db.SetMaxOpenConns(1)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, db, migrations)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("prepare migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate database %s: %w", path, err)
	}
	return db, nil
}

// OpenReader opens a pool of up to conns read-only connections to the
// database at path, which Open must already have created and migrated. In
// WAL mode readers do not wait for the writer, so a server can keep its reads
// off the one connection Open returns. The connections refuse writes
// (PRAGMA query_only) and never create the file.
func OpenReader(ctx context.Context, path string, conns int) (*sql.DB, error) {
	if conns < 1 {
		return nil, fmt.Errorf("open database %s for reading: need at least one connection, got %d", path, conns)
	}
	q := url.Values{}
	q.Set("mode", "rw") // SQLite's own URI parameter: open, never create
	for _, p := range []string{
		"busy_timeout(10000)",
		"query_only(1)",
	} {
		q.Add("_pragma", p)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open database %s for reading: %w", path, err)
	}
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s for reading: %w", path, err)
	}
	return db, nil
}
