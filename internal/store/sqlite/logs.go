package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"math"
	"runtime"
	"strings"
	"time"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/store"
)

//go:embed logmigrations/*.sql
var logMigrationFiles embed.FS

// LogStore keeps devices' log lines in their own SQLite file (logs.db), so
// that log writes never wait on the fleet's database and the fleet's
// database never waits on them. Like Store, writes go through one
// connection and reads through a pool of read-only ones.
//
// The file is opened as every reeve database is: WAL with
// synchronous=FULL. NORMAL would save an fsync per commit, but a power cut
// could then lose the last commits, and the server acknowledges lines to the
// agent (which forgets them) only after their commit: with FULL, an
// acknowledged line is a stored line. The fsyncs are shared: the server
// commits the lines of many devices together.
type LogStore struct {
	w *sql.DB // the one writer connection
	r *sql.DB // read-only connections; w itself when there are none
}

var _ store.LogStore = (*LogStore)(nil)

// NewLogStore opens (creating and migrating if needed) the log store at
// path.
func NewLogStore(ctx context.Context, path string) (*LogStore, error) {
	return openLogs(ctx, path, max(4, runtime.NumCPU()))
}

// openLogs opens the log store with a pool of readers read-only
// connections; with none, reads share the writer's connection.
func openLogs(ctx context.Context, path string, readers int) (*LogStore, error) {
	w, r, err := openDBs(ctx, path, logMigrationFiles, "logmigrations", readers)
	if err != nil {
		return nil, err
	}
	return &LogStore{w: w, r: r}, nil
}

// Close closes the readers, then the writer.
func (s *LogStore) Close() error { return closeDBs(s.w, s.r) }

// deleteChunk is how many lines one transaction of a prune, trim or
// deletion removes at most: appends wait for no more than that.
const deleteChunk = 5000

const logCols = `id, device, seq, ts, service, stderr, system, message`

func scanLogLine(row scanner) (reeve.LogLine, error) {
	var (
		l   reeve.LogLine
		seq int64
		ts  int64
	)
	err := row.Scan(&l.ID, &l.Device, &seq, &ts, &l.Service, &l.Stderr, &l.System, &l.Message)
	l.Seq = uint64(seq)
	l.Timestamp = time.UnixMicro(ts).UTC()
	return l, err
}

func (s *LogStore) AppendLogs(ctx context.Context, batches []store.LogBatch) ([]store.LogAppended, error) {
	for _, b := range batches {
		for _, l := range b.Lines {
			if l.Seq > math.MaxInt64 {
				return nil, reeve.Errorf(reeve.CodeInvalid, "seq %d of a line of device %s is larger than %d", l.Seq, b.Device, int64(math.MaxInt64))
			}
		}
	}
	const op = "store log lines"
	out := make([]store.LogAppended, len(batches))
	now := time.Now()
	err := inTx(ctx, s.w, op, func(tx *sql.Tx) error {
		// DO NOTHING without a target skips a line that breaks the
		// partial unique index (a duplicate), which RETURNING then
		// shows as no row.
		ins, err := tx.PrepareContext(ctx, `INSERT INTO log_lines
			(device, stream, seq, ts, received_at, service, stderr, system, message)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id`)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		defer ins.Close()
		for i, b := range batches {
			recv := b.ReceivedAt
			if recv.IsZero() {
				recv = now
			}
			res := store.LogAppended{Stored: make([]reeve.LogLine, 0, len(b.Lines))}
			for _, l := range b.Lines {
				ts := l.Timestamp.UnixMicro()
				err := ins.QueryRowContext(ctx, b.Device, b.Stream, int64(l.Seq), ts, millis(recv),
					l.Service, l.Stderr, l.System, l.Message).Scan(&l.ID)
				switch {
				case errors.Is(err, sql.ErrNoRows):
					res.Duplicates++
					continue
				case err != nil:
					return fmt.Errorf("%s of device %s: %w", op, b.Device, err)
				}
				l.Device = b.Device
				l.Timestamp = time.UnixMicro(ts).UTC()
				res.Stored = append(res.Stored, l)
			}
			if len(res.Stored) > 0 {
				if _, err := tx.ExecContext(ctx, `INSERT INTO log_devices (device, lines) VALUES (?, ?)
					ON CONFLICT (device) DO UPDATE SET lines = log_devices.lines + excluded.lines`,
					b.Device, len(res.Stored)); err != nil {
					return fmt.Errorf("%s of device %s: %w", op, b.Device, err)
				}
			}
			if b.Stream != "" {
				// The index's own terms (stream <> '', seq <> 0) let
				// SQLite answer from the partial index.
				var last int64
				if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM log_lines
					WHERE device = ? AND stream = ? AND stream <> '' AND seq <> 0`, b.Device, b.Stream).Scan(&last); err != nil {
					return fmt.Errorf("%s of device %s: %w", op, b.Device, err)
				}
				res.LastSeq = uint64(last)
			}
			out[i] = res
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (s *LogStore) LogLines(ctx context.Context, device string, q store.LogQuery) ([]reeve.LogLine, error) {
	if q.Limit < 0 {
		return nil, reeve.Errorf(reeve.CodeInvalid, "a limit of %d lines: give 0 (all) or more", q.Limit)
	}
	var where strings.Builder
	where.WriteString(`device = ?`)
	args := []any{device}
	if q.After > 0 {
		where.WriteString(` AND id > ?`)
		args = append(args, q.After)
	}
	if !q.Since.IsZero() {
		where.WriteString(` AND ts >= ?`)
		args = append(args, ceilMicro(q.Since))
	}
	if q.System {
		where.WriteString(` AND system = 1`)
	}
	if len(q.Services) > 0 {
		where.WriteString(` AND service IN (?` + strings.Repeat(`, ?`, len(q.Services)-1) + `)`)
		for _, svc := range q.Services {
			args = append(args, svc)
		}
	}
	query := `SELECT ` + logCols + ` FROM log_lines WHERE ` + where.String() + ` ORDER BY id`
	if q.Limit > 0 {
		query = `SELECT ` + logCols + ` FROM (SELECT ` + logCols + ` FROM log_lines WHERE ` + where.String() +
			` ORDER BY id DESC LIMIT ?) AS newest ORDER BY id`
		args = append(args, q.Limit)
	}
	rows, err := s.r.QueryContext(ctx, query, args...)
	return list(rows, err, "read log lines of device "+device, scanLogLine)
}

// ceilMicro is t in unix microseconds, rounded up: a line (kept to the
// microsecond) is not before t exactly when its microseconds are not
// below this.
func ceilMicro(t time.Time) int64 {
	us := t.UnixMicro()
	if time.UnixMicro(us).Before(t) {
		us++
	}
	return us
}

func (s *LogStore) PruneLogs(ctx context.Context, receivedBefore time.Time) (int64, error) {
	return s.deleteLines(ctx, "prune log lines", `received_at < ?`, millis(receivedBefore))
}

func (s *LogStore) TrimLogs(ctx context.Context, maxLines int) (int64, error) {
	const op = "trim log lines"
	if maxLines < 1 {
		return 0, reeve.Errorf(reeve.CodeInvalid, "keep at least one log line a device (%d asked)", maxLines)
	}
	rows, err := s.r.QueryContext(ctx, `SELECT device FROM log_devices WHERE lines > ? ORDER BY device`, maxLines)
	over, err := list(rows, err, op, func(row scanner) (string, error) {
		var d string
		return d, row.Scan(&d)
	})
	if err != nil {
		return 0, err
	}
	var total int64
	for _, d := range over {
		// The newest line to go: lines stored meanwhile come after it,
		// so at least maxLines stay.
		var cut int64
		err := s.r.QueryRowContext(ctx, `SELECT id FROM log_lines WHERE device = ? ORDER BY id DESC LIMIT 1 OFFSET ?`,
			d, maxLines).Scan(&cut)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			continue
		case err != nil:
			return total, fmt.Errorf("%s of device %s: %w", op, d, err)
		}
		n, err := s.deleteLines(ctx, op, `device = ? AND id <= ?`, d, cut)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func (s *LogStore) DeleteDeviceLogs(ctx context.Context, device string) (int64, error) {
	return s.deleteLines(ctx, "delete log lines of device "+device, `device = ?`, device)
}

// deleteLines removes the lines that match cond (with args), at most
// deleteChunk a transaction, keeping log_devices' counts with them. It
// returns how many it removed, also when it fails part way.
func (s *LogStore) deleteLines(ctx context.Context, op, cond string, args ...any) (int64, error) {
	query := `DELETE FROM log_lines WHERE id IN (SELECT id FROM log_lines WHERE ` + cond + ` LIMIT ?) RETURNING device`
	args = append(args[:len(args):len(args)], deleteChunk)
	var total int64
	for {
		var n int64
		err := inTx(ctx, s.w, op, func(tx *sql.Tx) error {
			rows, err := tx.QueryContext(ctx, query, args...)
			if err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
			perDevice := map[string]int64{}
			for rows.Next() {
				var d string
				if err := rows.Scan(&d); err != nil {
					rows.Close()
					return fmt.Errorf("%s: %w", op, err)
				}
				perDevice[d]++
			}
			if err := errors.Join(rows.Err(), rows.Close()); err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
			for d, k := range perDevice {
				if _, err := tx.ExecContext(ctx, `UPDATE log_devices SET lines = lines - ? WHERE device = ?`, k, d); err != nil {
					return fmt.Errorf("%s: %w", op, err)
				}
				if _, err := tx.ExecContext(ctx, `DELETE FROM log_devices WHERE device = ? AND lines <= 0`, d); err != nil {
					return fmt.Errorf("%s: %w", op, err)
				}
				n += k
			}
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
		if n < deleteChunk {
			return total, nil
		}
	}
}
