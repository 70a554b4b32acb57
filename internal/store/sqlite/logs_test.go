package sqlite

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"reeve.dev/reeve"
	"reeve.dev/reeve/internal/store"
	"reeve.dev/reeve/internal/store/storetest"
)

func newLogStore(t testing.TB, path string, readers int) *LogStore {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "logs.db")
	}
	s, err := openLogs(t.Context(), path, readers)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close log store: %v", err)
		}
	})
	return s
}

func TestLogStore(t *testing.T) {
	storetest.RunLogs(t, func(t *testing.T) store.LogStore {
		s, err := NewLogStore(t.Context(), filepath.Join(t.TempDir(), "logs.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("close log store: %v", err)
			}
		})
		return s
	})
}

// TestLogStoreWithoutReaders runs the suite with every read on the
// writer's connection.
func TestLogStoreWithoutReaders(t *testing.T) {
	storetest.RunLogs(t, func(t *testing.T) store.LogStore { return newLogStore(t, "", 0) })
}

func TestLogStoreReopenKeepsLinesAndStreams(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "logs.db")
	dev := strings.Repeat("d", 32)
	s, err := NewLogStore(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.AppendLogs(ctx, []store.LogBatch{{Device: dev, Stream: "s1", Lines: []reeve.LogLine{
		{Seq: 1, Timestamp: time.Now(), Service: "web", Message: "one"},
		{Seq: 2, Timestamp: time.Now(), Service: "web", Message: "two"},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	// Deleting every line and closing: the next ID still comes after.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = NewLogStore(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.LogLines(ctx, dev, store.LogQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(first[0].Stored, got); diff != "" {
		t.Errorf("lines after reopening (-want +got):\n%s", diff)
	}
	again, err := s.AppendLogs(ctx, []store.LogBatch{{Device: dev, Stream: "s1", Lines: []reeve.LogLine{
		{Seq: 2, Message: "two"}, {Seq: 3, Message: "three"},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if a := again[0]; a.Duplicates != 1 || len(a.Stored) != 1 || a.LastSeq != 3 || a.Stored[0].ID <= got[1].ID {
		t.Errorf("after reopening: %+v; want seq 2 a duplicate, seq 3 stored after ID %d", a, got[1].ID)
	}
}

func TestLogStoreReadersCannotWrite(t *testing.T) {
	s := newLogStore(t, "", 1)
	if _, err := s.r.ExecContext(t.Context(), `DELETE FROM log_lines`); err == nil {
		t.Fatal("the read pool accepted a DELETE")
	}
}

// TestLogStoreQueriesUseIndexes checks the plans of the queries that run
// on every append and every minute: none may scan the table.
func TestLogStoreQueriesUseIndexes(t *testing.T) {
	s := newLogStore(t, "", 1)
	for _, q := range []struct {
		query string
		args  []any
		index string
	}{
		{`SELECT COALESCE(MAX(seq), 0) FROM log_lines WHERE device = ? AND stream = ? AND stream <> '' AND seq <> 0`, []any{"d", "s"}, "log_lines_stream_seq"},
		{`SELECT id FROM log_lines WHERE device = ? ORDER BY id DESC LIMIT 1 OFFSET ?`, []any{"d", 10}, "log_lines_device"},
		{`SELECT id FROM log_lines WHERE received_at < ? LIMIT ?`, []any{0, deleteChunk}, "log_lines_received"},
		{`SELECT id FROM log_lines WHERE device = ? AND id > ? ORDER BY id DESC LIMIT ?`, []any{"d", 0, 10}, "log_lines_device"},
	} {
		rows, err := s.w.QueryContext(t.Context(), `EXPLAIN QUERY PLAN `+q.query, q.args...)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		text := strings.Join(plan, "; ")
		if !strings.Contains(text, q.index) || strings.Contains(text, "SCAN log_lines") && !strings.Contains(text, "USING") {
			t.Errorf("%s\nplan: %s\nwant it to use %s", q.query, text, q.index)
		}
	}
}

// BenchmarkAppendLogs stores batches of 10 lines of 100 devices a commit,
// as the server's group commit does under load.
func BenchmarkAppendLogs(b *testing.B) {
	s := newLogStore(b, "", 2)
	const devices, perDevice = 100, 10
	seq := uint64(0)
	b.ResetTimer()
	for range b.N {
		batches := make([]store.LogBatch, devices)
		for d := range batches {
			lines := make([]reeve.LogLine, perDevice)
			for i := range lines {
				lines[i] = reeve.LogLine{Seq: seq + uint64(i) + 1, Timestamp: time.Now(), Service: "web", Message: "GET /index.html 200 0.4ms"}
			}
			batches[d] = store.LogBatch{Device: fmt.Sprintf("%032x", d), Stream: "s", Lines: lines}
		}
		seq += perDevice
		if _, err := s.AppendLogs(b.Context(), batches); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(devices*perDevice), "lines/op")
}
